# Unit tests for engine/base/tier.c: included from tests/unit/CMakeLists.txt.
add_executable(test_tier ${CMAKE_CURRENT_LIST_DIR}/test_tier.c)
target_link_libraries(test_tier aspen_engine_base PkgConfig::CMOCKA)
add_test(NAME test_tier COMMAND test_tier)
