# test_workq: proxy/workq.c (the work queue and the uv_async hand-back the
# engine bridge uses), with real threads and a real loop.
add_executable(test_workq ${CMAKE_CURRENT_LIST_DIR}/test_workq.c)
target_include_directories(test_workq PRIVATE ${CMAKE_SOURCE_DIR}/proxy)
target_link_libraries(test_workq aspen_proxy PkgConfig::CMOCKA)
add_test(NAME test_workq COMMAND test_workq)
