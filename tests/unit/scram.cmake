# test_scram: proxy/scram.c (included by the test) against the RFC 5802 /
# RFC 7677 vectors, plus full conversations and malformed messages. It needs
# only wire/ and OpenSSL, not the rest of the proxy.
add_executable(test_scram ${CMAKE_CURRENT_LIST_DIR}/test_scram.c)
target_include_directories(test_scram PRIVATE ${CMAKE_SOURCE_DIR}/proxy)
target_link_libraries(test_scram aspen_wire PkgConfig::OPENSSL PkgConfig::CMOCKA
                      Threads::Threads)
add_test(NAME test_scram COMMAND test_scram)
