# Unit tests for engine/lang/accum.c: included from tests/unit/CMakeLists.txt.
# Cases live in tests/cases/accum/*.json. They link the pure
# aspen_engine_lang alone.
add_executable(test_accum ${CMAKE_CURRENT_LIST_DIR}/test_accum.c)
target_link_libraries(test_accum aspen_engine_lang PkgConfig::CMOCKA)
target_compile_definitions(test_accum PRIVATE
  ASPEN_CASES_DIR="${CMAKE_SOURCE_DIR}/tests/cases")
add_test(NAME test_accum COMMAND test_accum)
