# test_engine: the engine's command layer and saved state (engine/engine.c
# and engine/runtime/registry.c, included by the test to reach their static
# helpers): UTF-8 at the command
# boundary, saves that never replace a good file, strict loading of the
# state files, processor names and ids, one file per processor.
add_executable(test_engine ${CMAKE_CURRENT_LIST_DIR}/test_engine.c)
target_link_libraries(test_engine aspen_engine PkgConfig::CMOCKA)
add_test(NAME test_engine COMMAND test_engine)
