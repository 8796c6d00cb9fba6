# Unit tests for engine/lang/ (expr*.c, value.c, vars.c): included from
# tests/unit/CMakeLists.txt. Cases live in tests/cases/expr/*.json. They link
# the pure aspen_engine_lang alone.
add_executable(test_expr ${CMAKE_CURRENT_LIST_DIR}/test_expr.c)
target_link_libraries(test_expr aspen_engine_lang PkgConfig::CMOCKA m)
target_compile_definitions(test_expr PRIVATE
  ASPEN_CASES_DIR="${CMAKE_SOURCE_DIR}/tests/cases")
add_test(NAME test_expr COMMAND test_expr)
