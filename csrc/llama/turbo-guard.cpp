#include "turbo-guard.h"

#include "ggml-backend.h"

#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

namespace {

// Thrown by the abort callback inside a guarded call; caught by that call.
struct ggml_aborted : std::runtime_error {
    using std::runtime_error::runtime_error;
};

thread_local int t_guard_depth = 0;
ggml_abort_callback_t g_previous_callback = nullptr;

void throw_inside_guarded_calls(const char * message) {
    if (t_guard_depth > 0) {
        throw ggml_aborted(message);
    }
    // Elsewhere what ggml (or whoever set a callback before us) would do; ggml then aborts.
    if (g_previous_callback != nullptr) {
        g_previous_callback(message);
    } else {
        fprintf(stderr, "%s\n", message);
    }
}

void install_abort_callback() {
    static std::once_flag once;
    std::call_once(once, [] { g_previous_callback = ggml_set_abort_callback(throw_inside_guarded_calls); });
}

void copy_message(const char * message, char * error, size_t error_size) {
    if (error == nullptr || error_size == 0) {
        return;
    }
    snprintf(error, error_size, "%s", message);
}

// Runs call() with aborts turned into a PYTURBO_GUARD_ABORTED return.
template <typename Call>
int32_t guarded(Call && call, char * error, size_t error_size) {
    install_abort_callback();
    copy_message("", error, error_size);
    ++t_guard_depth;
    try {
        int32_t result = call();
        --t_guard_depth;
        return result;
    } catch (const std::exception & aborted) {
        // llama.cpp throws std::exception subclasses of its own too; all end the call.
        --t_guard_depth;
        copy_message(aborted.what(), error, error_size);
        return PYTURBO_GUARD_ABORTED;
    }
}

}  // namespace

int32_t pyturbo_guarded_decode(llama_context * ctx, llama_batch batch, char * error, size_t error_size) {
    return guarded([&] {
        int32_t status = llama_decode(ctx, batch);
        // llama_decode returns with the work queued; the backend (an RPC worker) reports a
        // failure when it is waited for, which must happen here, inside the guard, not in
        // the llama_get_logits or sampler call that would wait next.
        llama_synchronize(ctx);
        return status;
    }, error, error_size);
}

int32_t pyturbo_guarded_rpc_add_server(const char * endpoint, char * error, size_t error_size) {
    ggml_backend_reg_t rpc = ggml_backend_reg_by_name("RPC");
    if (rpc == nullptr) {
        copy_message("this build of pyturbo has no RPC backend (GGML_RPC=OFF)", error, error_size);
        return 0;
    }
    using add_server_fn = ggml_backend_reg_t (*)(const char *);
    auto add_server = (add_server_fn) ggml_backend_reg_get_proc_address(rpc, "ggml_backend_rpc_add_server");
    if (add_server == nullptr) {
        copy_message("the RPC backend has no ggml_backend_rpc_add_server", error, error_size);
        return 0;
    }
    return guarded([&]() -> int32_t {
        ggml_backend_reg_t server = add_server(endpoint);
        if (server == nullptr) {
            throw ggml_aborted(std::string("RPC worker ") + endpoint + " serves no devices");
        }
        // Registering twice would list its devices twice; ggml_backend_rpc_add_server
        // returns the same registration for an endpoint it has seen.
        bool registered = false;
        for (size_t i = 0; i < ggml_backend_reg_count(); ++i) {
            registered = registered || ggml_backend_reg_get(i) == server;
        }
        if (!registered) {
            ggml_backend_register(server);
        }
        return (int32_t) ggml_backend_reg_dev_count(server);
    }, error, error_size);
}

int32_t pyturbo_guarded_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total,
                                   char * error, size_t error_size) {
    *free = 0;
    *total = 0;
    return guarded([&]() -> int32_t {
        ggml_backend_dev_memory(device, free, total);
        return 0;
    }, error, error_size);
}

int32_t pyturbo_guarded_memory_clear(llama_context * ctx, char * error, size_t error_size) {
    return guarded([&]() -> int32_t {
        llama_memory_clear(llama_get_memory(ctx), true);
        return 0;
    }, error, error_size);
}
