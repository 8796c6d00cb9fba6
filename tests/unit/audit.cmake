# test_audit: proxy/audit.c (the audit log's JSON lines and writer thread).
add_executable(test_audit ${CMAKE_CURRENT_LIST_DIR}/test_audit.c)
target_include_directories(test_audit PRIVATE ${CMAKE_SOURCE_DIR}/proxy)
target_link_libraries(test_audit aspen_proxy PkgConfig::CMOCKA)
add_test(NAME test_audit COMMAND test_audit)
