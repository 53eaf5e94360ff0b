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
 *
 * With KTRACE_API_OUT=FILE it also writes, to FILE, what the host did
 * around the kernels: every CUDA runtime and driver call (R or D, start ns,
 * end ns, thread, correlation id, name), every kernel's correlation id and
 * cluster shape (K, start, end, correlation id, XxYxZ; a kernel of a CUDA
 * graph carries the graph launch's id), and NVTX ranges (M, START or END
 * flag, ns, range id, thread, name) when NVTX_INJECTION64_PATH names
 * CUPTI's library (the mlx-cuda-13 0.32.2 wheel's libmlx recorded none on
 * 2026-12-07). bench/host_gaps.py reads it beside the kernels.
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
static FILE *api_out;

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
      if (api_out)
        fprintf(api_out, "K\t%llu\t%llu\t%u\t%ux%ux%u\n", (unsigned long long)k->start,
                (unsigned long long)k->end, k->correlationId, k->clusterX, k->clusterY,
                k->clusterZ);
    } else if (api_out && (record->kind == CUPTI_ACTIVITY_KIND_RUNTIME ||
                           record->kind == CUPTI_ACTIVITY_KIND_DRIVER)) {
      const CUpti_ActivityAPI *a = (const CUpti_ActivityAPI *)record;
      int runtime = record->kind == CUPTI_ACTIVITY_KIND_RUNTIME;
      const char *name = NULL;
      if (cuptiGetCallbackName(runtime ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API,
                               a->cbid, &name) != CUPTI_SUCCESS || !name)
        name = "?";
      fprintf(api_out, "%c\t%llu\t%llu\t%u\t%u\t%s\n", runtime ? 'R' : 'D',
              (unsigned long long)a->start, (unsigned long long)a->end, a->threadId,
              a->correlationId, name);
    } else if (api_out && record->kind == CUPTI_ACTIVITY_KIND_MARKER) {
      const CUpti_ActivityMarker2 *m = (const CUpti_ActivityMarker2 *)record;
      const char *flag = (m->flags & CUPTI_ACTIVITY_FLAG_MARKER_START) ? "START"
                         : (m->flags & CUPTI_ACTIVITY_FLAG_MARKER_END) ? "END"
                                                                        : "MARK";
      fprintf(api_out, "M\t%s\t%llu\t%u\t%u\t%s\n", flag, (unsigned long long)m->timestamp,
              m->id, m->objectId.pt.threadId, m->name ? m->name : "");
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
  if (api_out) fclose(api_out);
  out = NULL;
  api_out = NULL;
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
  const char *api_path = getenv("KTRACE_API_OUT");
  if (api_path) {
    api_out = fopen(api_path, "w");
    if (!api_out) {
      perror("ktrace: KTRACE_API_OUT");
      return 0;
    }
    if (cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MARKER) != CUPTI_SUCCESS) {
      fprintf(stderr, "ktrace: CUPTI refused the API or marker activity\n");
      return 0;
    }
  }
  atexit(flush_at_exit);
  return 1;
}
