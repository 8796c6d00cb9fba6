# Unit tests for checkpoint files (engine/runtime/checkpoint.c): encode/decode,
# truncation and bit-flip detection, fallback to the previous checkpoint.
add_executable(test_checkpoint ${CMAKE_CURRENT_LIST_DIR}/test_checkpoint.c)
target_link_libraries(test_checkpoint aspen_engine PkgConfig::CMOCKA)
add_test(NAME test_checkpoint COMMAND test_checkpoint)
