# Unit tests for wire/: included from tests/CMakeLists.txt.
add_executable(test_wire ${CMAKE_CURRENT_LIST_DIR}/test_wire.c)
target_link_libraries(test_wire aspen_wire PkgConfig::CMOCKA)
add_test(NAME test_wire COMMAND test_wire)
target_compile_definitions(test_wire PRIVATE
  ASPEN_CASES_DIR="${CMAKE_SOURCE_DIR}/tests/cases")
