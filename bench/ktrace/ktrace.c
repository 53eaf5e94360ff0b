/*
 * ktrace: a CUPTI injection library that writes every GPU kernel a process
 * runs (start ns, end ns, name) to a TSV file, for a kernel-by-kernel look
 * at a `csm bench-train` step on NVIDIA GPUs (bench/kernel_table.py reads
 * it). Kernels inside CUDA graphs are recorded too. Nsight Compute made no
 * progress on such a run in 330 s; this only timestamps kernels, as the
 * PyTorch profiler does for the peer.
 *
 *   cc -O2 -shared -fPIC bench/ktrace/ktrace.c -I$CUDA/include \
 *      -I$CUDA/extras/CUPTI/include -L$CUDA/extras/CUPTI/lib64 -lcupti -o ktrace.so
 *   CUDA_INJECTION64_PATH=$PWD/ktrace.so KTRACE_OUT=kernels.tsv csm bench-train ...
 *
 * (bench/run_gpu.sh finds CUPTI wherever the toolkit keeps it.) The CUDA
 * driver loads the library at cuInit and calls InitializeInjection.
 * Compiled with -Wall -Wextra against CUPTI 12.8's headers (PyPI
 * nvidia-cuda-cupti-cu12); run on H100s against the CUDA 13 toolkit's CUPTI
 * (2025.3.1) on 2026-12-07, where a traced step ran at its usual speed.
 */
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

#if CUPTI_API_VERSION >= 130200
typedef CUpti_ActivityKernel11 KernelRecord;
#elif CUPTI_API_VERSION >= 130000
typedef CUpti_ActivityKernel10 KernelRecord;
#else
typedef CUpti_ActivityKernel9 KernelRecord;
#endif

#define BUFFER_BYTES (16u << 20)

static FILE *out;

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
  *buffer = aligned_alloc(ACTIVITY_RECORD_ALIGNMENT, BUFFER_BYTES);
  *size = *buffer ? BUFFER_BYTES : 0;
  *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size,
                                      size_t valid) {
  (void)ctx;
  (void)stream;
  (void)size;
  CUpti_Activity *record = NULL;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
      const KernelRecord *k = (const KernelRecord *)record;
      fprintf(out, "%llu\t%llu\t%s\n", (unsigned long long)k->start, (unsigned long long)k->end,
              k->name ? k->name : "?");
    }
  }
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(NULL, 0, &dropped) == CUPTI_SUCCESS && dropped)
    fprintf(stderr, "ktrace: %zu kernel records dropped\n", dropped);
  free(buffer);
}

static void flush_at_exit(void) {
  cuptiActivityFlushAll(1);
  if (out) fclose(out);
  out = NULL;
}

int InitializeInjection(void) {
  const char *path = getenv("KTRACE_OUT");
  out = fopen(path ? path : "ktrace.tsv", "w");
  if (!out) {
    perror("ktrace: KTRACE_OUT");
    return 0;
  }
  if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    fprintf(stderr, "ktrace: CUPTI refused the kernel activity\n");
    return 0;
  }
  atexit(flush_at_exit);
  return 1;
}
