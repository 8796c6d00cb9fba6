# test_tls: client and server tls_conns pumping in memory. Certificates come
# from certs/gen-dev-certs.sh, run into a temporary folder by the test.
# The test includes tls_int.h (OpenSSL types), hence the direct OpenSSL link.
add_executable(test_tls ${CMAKE_CURRENT_LIST_DIR}/test_tls.c)
target_link_libraries(test_tls aspen_tls PkgConfig::OPENSSL PkgConfig::CMOCKA)
add_test(NAME test_tls COMMAND test_tls)
set_tests_properties(test_tls PROPERTIES
  ENVIRONMENT "ASPEN_CERTS_SCRIPT=${CMAKE_SOURCE_DIR}/certs/gen-dev-certs.sh")
