# Unit tests for Avro through a schema registry (engine/connectors/avro.c,
# schema_registry.c, conn_schema_registry.c): the Avro <-> BSON mapping with
# logical types, refusals, and the registry client's behaviour when the
# registry is unreachable or never answers (a stop abandons the request;
# no registry needed).
add_executable(test_avro ${CMAKE_CURRENT_LIST_DIR}/test_avro.c)
target_link_libraries(test_avro aspen_engine PkgConfig::CMOCKA)
add_test(NAME test_avro COMMAND test_avro)
