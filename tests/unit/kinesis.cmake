# Unit tests for the Kinesis connector (engine/connectors/kinesis.c,
# conn_kinesis.c, source_kinesis.c, sink_emit_kinesis.c): how an answer of
# the service is classified, base64, basicJson, the connection's config and
# listing, and the $source and $emit option validation. No emulator needed
# (tests/e2e/test_kinesis.sh runs them against kinesalite).
add_executable(test_kinesis ${CMAKE_CURRENT_LIST_DIR}/test_kinesis.c)
target_link_libraries(test_kinesis aspen_engine PkgConfig::CMOCKA)
add_test(NAME test_kinesis COMMAND test_kinesis)
