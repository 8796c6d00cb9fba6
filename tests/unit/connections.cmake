# Unit tests for the table-driven kinds: the connection registry
# (engine/connectors/connections.c) loading config entries through the
# connector table's rows (connectors.def), the listings the kinds give,
# and a kind that is only a row in a test's own catalog.
add_executable(test_connections ${CMAKE_CURRENT_LIST_DIR}/test_connections.c)
target_link_libraries(test_connections aspen_engine PkgConfig::CMOCKA)
add_test(NAME test_connections COMMAND test_connections)
