# Unit tests for the table-driven connector kinds (engine/connectors/
# connectors.def): the connection registry (connections.c) loading config
# entries through the table's rows, the listings the kinds give, the
# pipeline parser reaching a $source and its options, and a sink, through a
# connection's row, and a kind that is only a row in a test's own catalog.
add_executable(test_connectors ${CMAKE_CURRENT_LIST_DIR}/test_connectors.c)
target_link_libraries(test_connectors aspen_engine PkgConfig::CMOCKA)
add_test(NAME test_connectors COMMAND test_connectors)
