# Unit tests for engine/lang/match*.c (the query matcher): included from
# tests/unit/CMakeLists.txt. Cases live in tests/cases/match/*.json. They link
# the pure aspen_engine_lang alone.
add_executable(test_match ${CMAKE_CURRENT_LIST_DIR}/test_match.c)
target_link_libraries(test_match aspen_engine_lang PkgConfig::CMOCKA)
target_compile_definitions(test_match PRIVATE
  ASPEN_CASES_DIR="${CMAKE_SOURCE_DIR}/tests/cases")
add_test(NAME test_match COMMAND test_match)
