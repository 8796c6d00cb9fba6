# test_commands: the sp command handlers (engine/commands/) and the
# processors store (engine/runtime/registry.c) driven directly, without a
# socket or the engine's composition root: ASP's replies and codes, starts
# (failed, deferred), sp.process into the shell cursor, persistence.
add_executable(test_commands ${CMAKE_CURRENT_LIST_DIR}/test_commands.c)
target_link_libraries(test_commands aspen_engine PkgConfig::CMOCKA)
add_test(NAME test_commands COMMAND test_commands)
