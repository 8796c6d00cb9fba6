# test_pipeline: the data-driven cases in tests/cases/pipeline/*.json run
# through the engine's pipeline (the e2e runner js/pipeline_cases.js uses the
# same files against a running aspen).
add_executable(test_pipeline ${CMAKE_CURRENT_LIST_DIR}/test_pipeline.c)
target_link_libraries(test_pipeline aspen_engine PkgConfig::CMOCKA m)
target_compile_definitions(test_pipeline PRIVATE
  ASPEN_CASES_DIR="${CMAKE_SOURCE_DIR}/tests/cases")
add_test(NAME test_pipeline COMMAND test_pipeline)
