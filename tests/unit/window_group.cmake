# test_window_group: a window's $group (engine/stages/window_block.c), its
# group keys' fast path against the general path and whole windows run
# with the fast path, the general path and every hash colliding.
add_executable(test_window_group ${CMAKE_CURRENT_LIST_DIR}/test_window_group.c)
target_link_libraries(test_window_group aspen_engine PkgConfig::CMOCKA)
add_test(NAME test_window_group COMMAND test_window_group)
