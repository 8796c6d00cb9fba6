# test_users: proxy/roles.c's roles and principal.c's privilege checks
# (custom roles parsed strictly, resources matched as mongod does, every
# namespace a command touches, mongod's refusal message, the engine's
# connection grants), and proxy/cursor_owners.c (whose each forwarded
# cursor is).
add_executable(test_users ${CMAKE_CURRENT_LIST_DIR}/test_users.c)
target_include_directories(test_users PRIVATE ${CMAKE_SOURCE_DIR}/proxy)
target_link_libraries(test_users aspen_proxy PkgConfig::CMOCKA)
add_test(NAME test_users COMMAND test_users)
