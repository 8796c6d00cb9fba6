# The $function expression's JavaScript engine: Duktape, built from the
# source Debian's duktape-dev ships (/usr/share/duktape/duktape.c) with
# its configuration changed in two places, so a call can be interrupted:
# DUK_USE_INTERRUPT_COUNTER and DUK_USE_EXEC_TIMEOUT_CHECK, which asks
# aspen__js_timeout_check (engine/lang/expr_function.c) every few thousand
# bytecode instructions whether the call is over its time or the processor
# is stopping. Debian's libduktape.so is built without them.
#
# ASPEN_JS: AUTO (default: on when the source is found), ON (required), OFF
# (built without it: $function is refused as "not yet").
set(ASPEN_JS "AUTO" CACHE STRING "Build $function with Duktape: AUTO, ON or OFF")
set(ASPEN_DUKTAPE_DIR "/usr/share/duktape" CACHE PATH
    "Where duktape.c and duk_config.h are (Debian's duktape-dev)")

set(ASPEN_HAVE_JS OFF)
if(NOT ASPEN_JS STREQUAL "OFF")
  if(EXISTS ${ASPEN_DUKTAPE_DIR}/duktape.c AND
     EXISTS ${ASPEN_DUKTAPE_DIR}/duk_config.h AND
     EXISTS ${ASPEN_DUKTAPE_DIR}/duktape.h)
    set(ASPEN_HAVE_JS ON)
  elseif(ASPEN_JS STREQUAL "ON")
    message(FATAL_ERROR "ASPEN_JS=ON but ${ASPEN_DUKTAPE_DIR}/duktape.c "
                        "is missing (apt-get install duktape-dev)")
  endif()
endif()
message(STATUS "aspen: $function (Duktape): ${ASPEN_HAVE_JS}")

if(ASPEN_HAVE_JS)
  set(gen ${CMAKE_BINARY_DIR}/duktape)
  file(MAKE_DIRECTORY ${gen})
  file(READ ${ASPEN_DUKTAPE_DIR}/duk_config.h cfg)
  foreach(opt INTERRUPT_COUNTER EXEC_TIMEOUT_CHECK)
    string(FIND "${cfg}" "#undef DUK_USE_${opt}\n" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "duk_config.h: no '#undef DUK_USE_${opt}' to change")
    endif()
  endforeach()
  string(REPLACE "#undef DUK_USE_INTERRUPT_COUNTER\n"
         "#define DUK_USE_INTERRUPT_COUNTER\n" cfg "${cfg}")
  string(REPLACE "#undef DUK_USE_EXEC_TIMEOUT_CHECK\n"
         "int aspen__js_timeout_check(void *udata);\n#define DUK_USE_EXEC_TIMEOUT_CHECK(udata) aspen__js_timeout_check((udata))\n"
         cfg "${cfg}")
  file(WRITE ${gen}/duk_config.h.new "${cfg}")
  configure_file(${gen}/duk_config.h.new ${gen}/duk_config.h COPYONLY)
  configure_file(${ASPEN_DUKTAPE_DIR}/duktape.h ${gen}/duktape.h COPYONLY)
  configure_file(${ASPEN_DUKTAPE_DIR}/duktape.c ${gen}/duktape.c COPYONLY)

  add_library(aspen_duktape STATIC ${gen}/duktape.c)
  target_include_directories(aspen_duktape SYSTEM PUBLIC ${gen})
  # Third-party code: none of aspen's warnings, and no -Werror.
  target_compile_options(aspen_duktape PRIVATE -w -Wno-error)
  target_link_libraries(aspen_duktape PUBLIC m)
  set_target_properties(aspen_duktape PROPERTIES POSITION_INDEPENDENT_CODE ON)
endif()
