# aspen_verify_links(TARGET LIB): every object of the static library LIB
# must link with nothing but LIB's own link interface (the libraries it
# says it uses), as one small executable TARGET built with the rest. A
# plain static link only pulls the objects something calls, so a file that
# called up into a library above LIB (the runtime into a connector, say)
# could go unnoticed for as long as that file's other callers linked the
# upper library too; linking the whole archive alone shows it at once.
# Needs CMake 3.24 ($<LINK_LIBRARY:WHOLE_ARCHIVE>; Debian 12 has 3.25): an
# older CMake builds without the check.
function(aspen_verify_links target lib)
  if(CMAKE_VERSION VERSION_LESS 3.24)
    return()
  endif()
  add_executable(${target} ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/verify_links.c)
  target_link_libraries(${target} PRIVATE
                        "$<LINK_LIBRARY:WHOLE_ARCHIVE,${lib}>")
endfunction()
