#include "turbo-rpc.h"

#include "ggml-backend-impl.h"

#include <map>
#include <mutex>

#ifndef _WIN32
#  include <netinet/in.h>
#  include <netinet/tcp.h>
#  include <sys/socket.h>
#endif

void pyturbo_rpc_keep_alive(int socket_fd) {
#ifndef _WIN32
    // Best effort: a socket without keepalive still works, it only waits longer on a dead peer.
    int on = 1;
    setsockopt(socket_fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    int idle = PYTURBO_RPC_KEEPALIVE_IDLE_S;
    int interval = PYTURBO_RPC_KEEPALIVE_INTERVAL_S;
    int probes = PYTURBO_RPC_KEEPALIVE_PROBES;
#  if defined(TCP_KEEPIDLE)
    setsockopt(socket_fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
#  elif defined(TCP_KEEPALIVE)  // macOS names the idle time so
    setsockopt(socket_fd, IPPROTO_TCP, TCP_KEEPALIVE, &idle, sizeof(idle));
#  endif
#  if defined(TCP_KEEPINTVL)
    setsockopt(socket_fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
#  endif
#  if defined(TCP_KEEPCNT)
    setsockopt(socket_fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
#  endif
    (void) idle; (void) interval; (void) probes;
#else
    (void) socket_fd;
#endif
}

// The wrapper shares the wrapped device's context, so every other interface function
// works unchanged; get_memory and init_backend need to know which wrapper they were
// called through.
struct memory_capped_device {
    ggml_backend_dev_t wrapped;
    size_t bytes;
};
static std::mutex g_capped_mutex;
static std::map<ggml_backend_dev_t, memory_capped_device> g_capped;

static memory_capped_device capped_of(ggml_backend_dev_t device) {
    std::lock_guard<std::mutex> lock(g_capped_mutex);
    return g_capped.at(device);
}

static void memory_capped_get_memory(ggml_backend_dev_t device, size_t * free, size_t * total) {
    *free = capped_of(device).bytes;
    *total = *free;
}

// The RPC server answers a client's memory question with its backend's device
// (ggml_backend_get_device), so the backends must point at the wrapper.
static ggml_backend_t memory_capped_init_backend(ggml_backend_dev_t device, const char * params) {
    ggml_backend_dev_t wrapped = capped_of(device).wrapped;
    ggml_backend_t backend = wrapped->iface.init_backend(wrapped, params);
    if (backend != nullptr) {
        backend->device = device;
    }
    return backend;
}

ggml_backend_dev_t pyturbo_rpc_device_with_memory(ggml_backend_dev_t device, size_t bytes) {
    if (device == nullptr || bytes == 0 || device->iface.init_backend == nullptr) {
        return nullptr;
    }
    ggml_backend_dev_t wrapper = new ggml_backend_device(*device);
    wrapper->iface.get_memory = memory_capped_get_memory;
    wrapper->iface.init_backend = memory_capped_init_backend;
    std::lock_guard<std::mutex> lock(g_capped_mutex);
    g_capped[wrapper] = memory_capped_device{device, bytes};
    return wrapper;
}
