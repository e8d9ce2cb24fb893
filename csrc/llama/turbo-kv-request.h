// pyturbo: contexts made with a K/V transform choice of their own.
//
// A llama_context decides its transform in its constructor (pyturbo_kvt_setup_context,
// called from llama.cpp by patches/0006), and llama_init_from_model's parameters have no
// field to carry a choice there. pyturbo_kvt_init_context carries it for the duration of
// that one call, on the calling thread; contexts made any other way (llama-server,
// llama-cpp-python) get $PYTURBO_KV_TRANSFORM's choice.
#pragma once

#include "llama.h"

#include <cstdint>

// llama_init_from_model, the context getting `flags` (PYTURBO_KVT_AUTO, 0 or bits).
llama_context * pyturbo_kvt_init_context(llama_model & model, const llama_context_params & params, int32_t flags);

// The choice made for the context being constructed on this thread, once (for its
// constructor); PYTURBO_KVT_NO_REQUEST when it was not made by pyturbo_kvt_init_context.
int32_t pyturbo_kvt_take_request();
