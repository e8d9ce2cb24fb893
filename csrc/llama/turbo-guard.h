// pyturbo: llama.cpp calls that report a ggml abort as an error instead of ending the
// process (compiled into the llama target; pyturbo's Python side calls them).
//
// ggml ends the process on a failed assertion or a lost RPC worker (GGML_ABORT).
// Inside these calls pyturbo's abort callback throws instead, the exception unwinds
// back here and the call returns PYTURBO_GUARD_ABORTED with ggml's message. What the
// aborted call was doing is not finished: its context (and, for a lost RPC worker, its
// model) cannot be used or freed safely afterwards; pyturbo's Python side drops them.
// Outside these calls ggml's aborts end the process as before.
#pragma once

#include "ggml-backend.h"
#include "llama.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PYTURBO_GUARD_ABORTED (-1000)

// llama_decode(ctx, batch) and llama_synchronize(ctx), so that the decode's work is done
// when it returns: its status, or PYTURBO_GUARD_ABORTED with the abort's message in error
// (error_size bytes, always NUL-terminated).
LLAMA_API int32_t pyturbo_guarded_decode(struct llama_context * ctx, struct llama_batch batch,
                                         char * error, size_t error_size);

// Registers the RPC worker at endpoint ("host:port") with ggml (its devices become
// "RPC<n>" devices) and returns how many devices it serves; 0 when the RPC backend is
// not built, PYTURBO_GUARD_ABORTED with the message when the worker cannot be reached
// or does not speak this build's RPC protocol.
LLAMA_API int32_t pyturbo_guarded_rpc_add_server(const char * endpoint, char * error, size_t error_size);

// ggml_backend_dev_memory(device, free, total): 0, or PYTURBO_GUARD_ABORTED with the
// message (an RPC device asks its worker, which may be gone; free and total are then 0).
LLAMA_API int32_t pyturbo_guarded_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total,
                                             char * error, size_t error_size);

// llama_memory_clear(llama_get_memory(ctx), true), which clears the cache's buffers (on
// the workers that hold them): 0, or PYTURBO_GUARD_ABORTED with the message.
LLAMA_API int32_t pyturbo_guarded_memory_clear(struct llama_context * ctx, char * error, size_t error_size);

#ifdef __cplusplus
}
#endif
