# Runs COMMAND (a ;-list) and requires: it ends within TIMEOUT seconds with a non-zero
# status, its output contains MPROC_ROOT_WAITING (the root got to the map) and not
# MPROC_ROOT_RETURNED (the root never took a dead rank's missing results for success).
execute_process(COMMAND ${COMMAND}
                TIMEOUT ${TIMEOUT}
                RESULT_VARIABLE rc
                OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
message("${out}")
message("${err}")
if(rc STREQUAL "0")
  message(FATAL_ERROR "the job exited 0 although a worker rank died")
endif()
if(rc MATCHES "timeout")
  message(FATAL_ERROR "the job did not end within ${TIMEOUT} s after a worker rank died: ${rc}")
endif()
if(NOT out MATCHES "MPROC_ROOT_WAITING")
  message(FATAL_ERROR "the root never reached the map (status ${rc}): the test proves nothing")
endif()
if(out MATCHES "MPROC_ROOT_RETURNED")
  message(FATAL_ERROR "the map returned normally although a worker rank died")
endif()
message(STATUS "job ended with status '${rc}' after a worker rank died, as it should")
