# test_restore: a windowed processor restored from its checkpoints after
# crashes, fed by a scripted two-partition source in an order the test
# chooses: no replayed input reaches the DLQ as late, every window counts
# each input once.
add_executable(test_restore ${CMAKE_CURRENT_LIST_DIR}/test_restore.c)
target_link_libraries(test_restore aspen_engine PkgConfig::CMOCKA)
add_test(NAME test_restore COMMAND test_restore)
