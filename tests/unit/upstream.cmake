# test_upstream: the forwarding relay (proxy/upstream*.c, upstream_topo.c)
# against a scripted backend peer on the same libuv loop, plus the pure
# parts: the OP_MSG rewrite and the primary / mongos choice.
add_executable(test_upstream ${CMAKE_CURRENT_LIST_DIR}/test_upstream.c)
target_include_directories(test_upstream PRIVATE ${CMAKE_SOURCE_DIR}/proxy)
target_link_libraries(test_upstream aspen_proxy PkgConfig::CMOCKA)
add_test(NAME test_upstream COMMAND test_upstream)
