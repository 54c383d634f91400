/*
 * device.h - which compute device runs the model, decided at run time.
 *
 * The CPU backend is always compiled. The CUDA backend is compiled when the build found nvcc
 * (DSV4_HAVE_CUDA); even then a run falls back to the CPU when no GPU answers, so one binary
 * serves both kinds of machine. Device state lives in per-device context structs created by
 * the backend (never in globals), so several GPUs can be driven from one process.
 */
#ifndef DSV4_BACKEND_DEVICE_H
#define DSV4_BACKEND_DEVICE_H

#include "dsv4.h"

#include <stddef.h>

/* Number of usable CUDA devices; 0 when built without CUDA or when the driver reports none or
 * fails (the reason is kept in dsv4_last_error() but is not an error for AUTO). */
int dsv4_cuda_device_count(void);
/* Name and memory of CUDA device `device`. */
dsv4_status dsv4_cuda_device_describe(int device, char *name, size_t name_size);

#endif
