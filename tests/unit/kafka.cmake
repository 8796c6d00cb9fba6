# Unit tests for the Kafka helpers (engine/connectors/kafka.c), the Kafka
# $source and $emit option validation, Kafka connections in the registry,
# and a produce/consume round trip through librdkafka's mock cluster (no
# broker needed).
add_executable(test_kafka ${CMAKE_CURRENT_LIST_DIR}/test_kafka.c)
target_link_libraries(test_kafka aspen_engine PkgConfig::CMOCKA)
add_test(NAME test_kafka COMMAND test_kafka)
