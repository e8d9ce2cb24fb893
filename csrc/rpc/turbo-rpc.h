// pyturbo's additions to ggml's RPC backend (compiled into ggml-rpc).
#pragma once

#include "ggml-backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// Turns on TCP keepalive for an RPC connection (patches/0009 calls it on both ends),
// so that a peer that vanished without closing (power, network) is noticed within
// about PYTURBO_RPC_KEEPALIVE_LIMIT_S seconds instead of never: the client then gets
// an error rather than waiting forever, and the worker serves its next client.
#define PYTURBO_RPC_KEEPALIVE_IDLE_S     10
#define PYTURBO_RPC_KEEPALIVE_INTERVAL_S 5
#define PYTURBO_RPC_KEEPALIVE_PROBES     3
#define PYTURBO_RPC_KEEPALIVE_LIMIT_S \
    (PYTURBO_RPC_KEEPALIVE_IDLE_S + PYTURBO_RPC_KEEPALIVE_INTERVAL_S * PYTURBO_RPC_KEEPALIVE_PROBES)
void pyturbo_rpc_keep_alive(int socket_fd);

// A device that is `device` in every respect but the memory it reports: `bytes` free
// and total. pyturbo.rpc_worker --mem serves it, so clients (which split layers by the
// workers' free memory) plan with what the worker offers, not with all of its RAM.
// Lives until the process ends.
GGML_BACKEND_API ggml_backend_dev_t pyturbo_rpc_device_with_memory(ggml_backend_dev_t device, size_t bytes);

#ifdef __cplusplus
}
#endif
