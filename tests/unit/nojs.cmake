# test_nojs: $function as a build without Duktape (-DASPEN_JS=OFF) has it.
# Only expr_function.c is compiled again (without ASPEN_HAVE_JS); the rest
# of lang/ is the objects every build compiles (aspen_engine_lang_objs in
# engine/CMakeLists.txt), so this costs one small file, not a second build.
add_executable(test_nojs ${CMAKE_CURRENT_LIST_DIR}/test_nojs.c
               ${CMAKE_SOURCE_DIR}/engine/lang/expr_function.c)
target_link_libraries(test_nojs aspen_engine_lang_objs PkgConfig::CMOCKA)
target_compile_definitions(test_nojs PRIVATE
  ASPEN_CASES_DIR="${CMAKE_SOURCE_DIR}/tests/cases")
add_test(NAME test_nojs COMMAND test_nojs)
