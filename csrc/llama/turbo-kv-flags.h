// pyturbo: the bits that name the K/V transforms (turbo-kv-transform.h), shared by every
// turbo-kv file and by Python (pyturbo/kv_transform.py mirrors them).
#pragma once

// Transform bits; 0 = off.
#define PYTURBO_KVT_K_CENTER   1
#define PYTURBO_KVT_K_EQUALIZE 2
#define PYTURBO_KVT_V_CENTER   4
#define PYTURBO_KVT_V_EQUALIZE 8
#define PYTURBO_KVT_K_CALIBRATE 16
// Lets each model take what helps it, by its cache types (pyturbo/kv_transform_auto.txt).
#define PYTURBO_KVT_AUTO      -1
// No choice made (contexts then get what $PYTURBO_KV_TRANSFORM says).
#define PYTURBO_KVT_NO_REQUEST -2
