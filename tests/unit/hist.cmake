# Unit tests for engine/base/hist.c: included from tests/unit/CMakeLists.txt.
add_executable(test_hist ${CMAKE_CURRENT_LIST_DIR}/test_hist.c)
target_link_libraries(test_hist aspen_engine_base PkgConfig::CMOCKA)
add_test(NAME test_hist COMMAND test_hist)
