# aspen_verify_headers(TARGET LIB BASE_DIR HEADER...): every header must
# compile alone, and twice in a row (its include guard), with what LIB
# gives its users (include directories, definitions): one tiny generated
# source per header, built into the object library TARGET as part of the
# normal build. The idea of mongoc's VerifyHeaders.cmake. Headers are
# named relative to BASE_DIR, the folder they are included from.
function(aspen_verify_headers target lib base_dir)
  set(sources)
  foreach(header ${ARGN})
    file(RELATIVE_PATH rel ${base_dir} ${header})
    string(MAKE_C_IDENTIFIER "${rel}" id)
    set(src ${CMAKE_CURRENT_BINARY_DIR}/verify_headers/${id}.c)
    set(content "#include \"${rel}\"\n#include \"${rel}\"\n")
    if(EXISTS ${src})
      file(READ ${src} old)
    else()
      set(old "")
    endif()
    if(NOT old STREQUAL content)
      file(WRITE ${src} "${content}")
    endif()
    list(APPEND sources ${src})
  endforeach()
  add_library(${target} OBJECT ${sources})
  target_link_libraries(${target} PRIVATE ${lib})
endfunction()
