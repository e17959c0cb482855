// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * Emberscope's sampler: a perf_event program on a cpu-clock event per CPU.
 * It counts (pid, user stack, kernel stack) for the processes userspace marks
 * as profiled in the pids map, and reports processes it has never seen so
 * userspace can classify them. Two count/stack buffers alternate so that
 * userspace drains one while the kernel fills the other.
 *
 * Stacks live in hash maps keyed by a 64-bit hash of the addresses, not in a
 * BPF_MAP_TYPE_STACK_TRACE: that map's buckets collide long before it is full
 * (about 1 stack in 30 is lost with 1,000 stacks in 16,384 buckets).
 *
 * For Python processes (py_procs) do_sample tail-calls walk_python, which
 * follows the sampled thread's interpreter frames MAX_PY_FRAMES deep at most,
 * PY_FRAMES_PER_PROG per program run, and counts the sample when done.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "profile.h"

#define PF_EXITING	0x00000004	/* include/linux/sched.h */
#define PY_FRAMES_PER_PROG	32
#define PY_MAX_PROGS		5	/* room for MAX_PY_FRAMES plus shim frames */
#define PY_FRAME_WINDOW		128	/* most bytes read at once from a frame */
#define PY_CODE_WINDOW		144	/* ... and from a code object */
#define PY_STR_HEADER		40	/* PyASCIIObject up to and including state */
#define PROG_WALK_PYTHON	0
#define PROG_WALK_NATIVE	1

_Static_assert(PY_NAME_LEN < 256 && PY_FILE_LEN < 256, "read_str masks sizes with 0xff");
#define PF_KTHREAD	0x00200000
#define E2BIG		7
#define EEXIST		17

const volatile struct profile_config profile_config = {};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct control);
} control SEC(".maps");

/* Resized by userspace to pid_map_size before load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2048);
	__type(key, __u32);
	__type(value, struct pid_config);
} pids SEC(".maps");

#define COUNTS_MAP(name)					\
	struct {						\
		__uint(type, BPF_MAP_TYPE_HASH);		\
		__uint(max_entries, 16384);			\
		__type(key, struct sample_key);			\
		__type(value, __u64);				\
	} name SEC(".maps")

#define STACKS_MAP(name)					\
	struct {						\
		__uint(type, BPF_MAP_TYPE_HASH);		\
		__uint(max_entries, 16384);			\
		__type(key, __u64);				\
		__type(value, struct stack_trace);		\
	} name SEC(".maps")

/* Resized by userspace to pid_map_size, or to 1 when Python is disabled. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2048);
	__type(key, __u32);
	__type(value, struct py_proc);
} py_procs SEC(".maps");

/* Names of code objects, copied once; resized to symbols_map_size. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct py_symbol_key);
	__type(value, struct py_symbol);
} py_symbols SEC(".maps");

#define PY_STACKS_MAP(name)					\
	struct {						\
		__uint(type, BPF_MAP_TYPE_HASH);		\
		__uint(max_entries, 4096);			\
		__type(key, __u64);				\
		__type(value, struct py_stack);			\
	} name SEC(".maps")

PY_STACKS_MAP(py_stacks_0);
PY_STACKS_MAP(py_stacks_1);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} programs SEC(".maps");

/* A sample being walked, carried from do_sample across tail calls. */
struct py_walk {
	struct sample_key key;
	__u64 frame;		/* next frame to read; 0 when the walk is over */
	__u32 buffer;		/* the count/stack buffer the sample goes to */
	__u32 runs;		/* walk_python runs so far */
	struct py_proc proc;
	struct py_stack stack;
	struct py_symbol symbol;
	__u8 frame_window[PY_FRAME_WINDOW];
	__u8 code_window[PY_CODE_WINDOW];
	__u8 str_header[PY_STR_HEADER];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct py_walk);
} py_walks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PY_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} py_stats SEC(".maps");

/* Per-CPU room to capture the user (key 0) and kernel (key 1) stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct stack_trace);
} stack_scratch SEC(".maps");

COUNTS_MAP(counts_0);
COUNTS_MAP(counts_1);
STACKS_MAP(stacks_0);
STACKS_MAP(stacks_1);

/*
 * Never read by the program. Userspace updates buffer_sync after switching
 * buffers: an update of a map-of-maps returns only after an RCU grace
 * period (maybe_wait_bpf_programs() in kernel/bpf/syscall.c), so no sample
 * that saw the old active_buffer is still being recorded when it drains.
 */
struct sync_inner_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sync_inner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct sync_inner_map);
} buffer_sync SEC(".maps") = {
	.values = { [0] = &sync_inner },
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* Samples recorded since load, per CPU: the progress and cost denominator. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sample_total SEC(".maps");

static __always_inline void count_drop(enum drop_reason reason)
{
	__u32 key = reason;
	__u64 *value;

	value = bpf_map_lookup_elem(&drops, &key);
	if (value)
		*value += 1;	/* per-CPU slot: no atomics needed */
}

static __always_inline void count_py_stat(enum py_stat stat)
{
	__u32 key = stat;
	__u64 *value;

	value = bpf_map_lookup_elem(&py_stats, &key);
	if (value)
		*value += 1;
}

static __always_inline void send_event(__u32 type, __u32 pid)
{
	struct pid_event event = { .type = type, .pid = pid };

	if (bpf_ringbuf_output(&events, &event, sizeof(event), 0))
		count_drop(DROP_EVENTS_FULL);
}

/* A new process, with what classifying it needs even after it has exited. */
static __always_inline void send_new_event(struct task_struct *task, __u32 tgid)
{
	struct pid_event *event;
	const char *name;

	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		count_drop(DROP_EVENTS_FULL);
		return;
	}
	event->type = PID_EVENT_NEW;
	event->pid = tgid;
	event->ppid = BPF_CORE_READ(task, real_parent, tgid);
	event->_pad = 0;
	event->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	name = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, name);
	if (!name || bpf_probe_read_kernel_str(event->cgroup_name, sizeof(event->cgroup_name),
					       name) < 0)
		event->cgroup_name[0] = 0;
	bpf_ringbuf_submit(event, 0);
}

/* First sight of a process: keep it as pending and tell userspace. */
static __always_inline struct pid_config *track_new_pid(struct task_struct *task, __u32 tgid)
{
	struct pid_config pending = {
		.state = PID_STATE_PENDING,
		.collect_user = profile_config.collect_user,
		.collect_kernel = profile_config.collect_kernel,
	};
	long err;

	if (!profile_config.discover_new)
		return NULL;
	err = bpf_map_update_elem(&pids, &tgid, &pending, BPF_NOEXIST);
	if (err && err != -EEXIST) {
		count_drop(DROP_PID_MAP_FULL);
		return NULL;
	}
	if (!err)
		send_new_event(task, tgid);
	return bpf_map_lookup_elem(&pids, &tgid);
}

/* FNV-1a over whole addresses; 0 is kept for "no stack". */
static __always_inline __u64 hash_stack(const struct stack_trace *trace, __u32 depth)
{
	__u64 hash = 0xcbf29ce484222325ULL;

	for (__u32 i = 0; i < MAX_STACK_DEPTH && i < depth; i++)
		hash = (hash ^ trace->ips[i]) * 0x100000001b3ULL;
	return hash ? hash : 1;
}

/* Keep a stack (zero past depth) in the buffer's stacks map; its hash, or 0. */
static __always_inline __u64 store_stack(void *stacks, const struct stack_trace *trace,
					 __u32 depth)
{
	__u64 hash = hash_stack(trace, depth);

	if (bpf_map_lookup_elem(stacks, &hash))
		return hash;
	if (bpf_map_update_elem(stacks, &hash, trace, BPF_NOEXIST) == -E2BIG) {
		count_drop(DROP_STACKS_MAP_FULL);
		return 0;
	}
	return hash;
}

static __always_inline __u64 capture_stack(void *ctx, void *stacks, __u32 slot, __u64 flags)
{
	struct stack_trace *trace;
	long size;

	trace = bpf_map_lookup_elem(&stack_scratch, &slot);
	if (!trace)
		return 0;
	/* zero-fills the rest of ips, so equal stacks are equal values */
	size = bpf_get_stack(ctx, trace->ips, sizeof(trace->ips), flags);
	if (size <= 0) {
		/* no kernel stack just means the sample was taken in user mode */
		if (flags & BPF_F_USER_STACK)
			count_drop(DROP_USER_STACK_MISSING);
		return 0;
	}
	return store_stack(stacks, trace, size / sizeof(__u64));
}

/*
 * Whether the tick interrupted user code, as the kernel's user_mode(regs).
 * Then there is no kernel stack to capture, and the walk is skipped. The
 * perf_event context only allows whole-word reads of regs, hence the cast.
 */
static __always_inline bool sampled_in_user_mode(struct bpf_perf_event_data *ctx)
{
#if defined(__TARGET_ARCH_x86)
	unsigned long cs = *(unsigned long *)((void *)&ctx->regs +
					      __builtin_offsetof(struct pt_regs, cs));

	return (cs & 3) == 3;
#elif defined(__TARGET_ARCH_arm64)
	return (ctx->regs.pstate & 0xf) == 0;	/* PSR_MODE_EL0t */
#else
	return false;	/* unknown: always try the kernel stack */
#endif
}

static __always_inline void count_sample(void *counts, struct sample_key *key)
{
	__u64 one = 1, *count;
	long err;

	count = bpf_map_lookup_elem(counts, key);
	if (count) {
		__sync_fetch_and_add(count, 1);
		return;
	}
	err = bpf_map_update_elem(counts, key, &one, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* another CPU inserted the same key first */
		count = bpf_map_lookup_elem(counts, key);
		if (count)
			__sync_fetch_and_add(count, 1);
	} else if (err) {
		count_drop(DROP_COUNTS_MAP_FULL);
	}
}

/* --- Python ------------------------------------------------------------ */

static __always_inline __u64 thread_pointer(struct task_struct *task)
{
#if defined(__TARGET_ARCH_x86)
	return BPF_CORE_READ(task, thread.fsbase);
#else
	return 0;	/* userspace enables Python only on x86_64 */
#endif
}

/* A field of a window read at once; the offset comes from userspace. */
static __always_inline __u64 window_u64(const __u8 *window, __u32 size, __u16 offset)
{
	if (offset > size - sizeof(__u64))
		return 0;
	return *(const __u64 *)(window + offset);
}

static __always_inline __u32 window_u32(const __u8 *window, __u32 size, __u16 offset)
{
	if (offset > size - sizeof(__u32))
		return 0;
	return *(const __u32 *)(window + offset);
}

static __always_inline __u8 window_u8(const __u8 *window, __u32 size, __u16 offset)
{
	if (offset > size - 1)
		return 0;
	return window[offset];
}

/*
 * The first frame of the sampled thread: its PyThreadState is the value of
 * the interpreter's pthread key, read the way glibc's pthread_getspecific()
 * does for keys below 32.
 */
static __always_inline __u64 top_frame(struct task_struct *task, const struct py_proc *proc)
{
	const struct py_offsets *off = &proc->offsets;
	__u64 tp = thread_pointer(task), tstate = 0, frame = 0;

	if (!tp)
		return 0;
	if (bpf_probe_read_user(&tstate, sizeof(tstate),
				(void *)(tp + proc->tsd_base + proc->tss_key * proc->tsd_stride +
					 proc->tsd_data)) || !tstate)
		return 0;
	if (bpf_probe_read_user(&frame, sizeof(frame), (void *)(tstate + off->tstate_frame)))
		return 0;
	if (frame && off->cframe_frame != PY_NO_OFFSET &&
	    bpf_probe_read_user(&frame, sizeof(frame), (void *)(frame + off->cframe_frame)))
		return 0;
	return frame;
}

/* Copy a str's bytes (the tail if keep_tail and it is too long). */
static __always_inline void read_str(struct py_walk *walk, __u64 str, char *out, __u32 cap,
				     __u16 *len, __u8 *kind, __u8 *truncated, bool keep_tail)
{
	const struct py_offsets *off = &walk->proc.offsets;
	__u32 state, size;
	__u64 length, data;

	*len = 0;
	if (!str || bpf_probe_read_user(walk->str_header, sizeof(walk->str_header), (void *)str))
		return;
	length = *(__u64 *)(walk->str_header + 16);	/* PyASCIIObject.length */
	state = *(__u32 *)(walk->str_header + 32);	/* interned:2 kind:3 compact:1 ascii:1 */
	*kind = (state >> 2) & 7;
	if (!(state & (1 << 5)) || !*kind)
		return;	/* not compact: never the case for code object names */
	data = str + ((state & (1 << 6)) ? off->unicode_ascii_data : off->unicode_compact_data);
	size = length * *kind;
	*truncated = size > cap;
	if (size > cap) {
		if (keep_tail)
			data += size - cap;
		size = cap;
	}
	/* size <= cap already: the mask, which clang must keep after the
	 * barrier, shows the verifier a bound */
	barrier_var(size);
	if (!bpf_probe_read_user(out, size & 0xff, (void *)data))
		*len = size;
}

/* Copy the names of a code object into py_symbols, once per (pid, code). */
static __always_inline void intern_symbol(struct py_walk *walk, __u64 code, __u32 first_line)
{
	const struct py_offsets *off = &walk->proc.offsets;
	struct py_symbol_key key = { .pid = walk->key.pid, .first_line = first_line, .code = code };
	struct py_symbol *symbol = &walk->symbol;
	__u64 name, file;

	if (bpf_map_lookup_elem(&py_symbols, &key))
		return;
	name = window_u64(walk->code_window, PY_CODE_WINDOW, off->code_name);
	file = window_u64(walk->code_window, PY_CODE_WINDOW, off->code_filename);
	read_str(walk, name, symbol->name, PY_NAME_LEN, &symbol->name_len, &symbol->name_kind,
		 &symbol->name_truncated, false);
	read_str(walk, file, symbol->file, PY_FILE_LEN, &symbol->file_len, &symbol->file_kind,
		 &symbol->file_truncated, true);
	if (!bpf_map_update_elem(&py_symbols, &key, symbol, BPF_NOEXIST))
		count_py_stat(PY_STAT_SYMBOLS_NEW);
}

/*
 * Read one frame and move to its caller. Shim frames and frames whose code
 * is not a code object are not pushed; a shim marks the frame before it as
 * the end of an eval loop run. Returns false when memory was unreadable.
 */
static __always_inline bool walk_frame(struct py_walk *walk)
{
	const struct py_offsets *off = &walk->proc.offsets;
	struct py_stack *stack = &walk->stack;
	__u32 depth = stack->depth, window = off->frame_window;
	__u64 frame = walk->frame, code, instr;
	__u32 first_line;
	__u8 flags = 0;
	__s64 lasti;

	if (window > PY_FRAME_WINDOW)
		return false;
	if (bpf_probe_read_user(walk->frame_window, window, (void *)frame))
		return false;
	walk->frame = window_u64(walk->frame_window, PY_FRAME_WINDOW, off->frame_previous);
	if (off->frame_owner != PY_NO_OFFSET && off->owner_cstack &&
	    window_u8(walk->frame_window, PY_FRAME_WINDOW, off->frame_owner) == off->owner_cstack) {
		if (depth > 0 && depth <= MAX_PY_FRAMES)
			stack->frame_flags[depth - 1] |= PY_FRAME_ENTRY;
		return true;
	}
	code = window_u64(walk->frame_window, PY_FRAME_WINDOW, off->frame_code);
	if (!code || off->code_window > PY_CODE_WINDOW ||
	    bpf_probe_read_user(walk->code_window, off->code_window, (void *)code))
		return false;
	if (window_u64(walk->code_window, PY_CODE_WINDOW, 8) != walk->proc.code_type)
		return true;	/* ob_type: a 3.13 shim's Py_None, or not Python code */
	first_line = window_u32(walk->code_window, PY_CODE_WINDOW, off->code_first_line);
	if (off->code_adaptive != PY_NO_OFFSET) {
		instr = window_u64(walk->frame_window, PY_FRAME_WINDOW, off->frame_instr);
		lasti = (__s64)(instr - code - off->code_adaptive);
	} else {
		lasti = (__s32)window_u32(walk->frame_window, PY_FRAME_WINDOW, off->frame_instr);
	}
	if (off->entry_every_frame ||
	    (off->frame_is_entry != PY_NO_OFFSET &&
	     window_u8(walk->frame_window, PY_FRAME_WINDOW, off->frame_is_entry)))
		flags |= PY_FRAME_ENTRY;
	if (depth >= MAX_PY_FRAMES) {
		/* a real frame past the limit: shims below the last one do not count */
		stack->flags |= PY_STACK_TRUNCATED;
		walk->frame = 0;
		return true;
	}
	stack->frames[depth].code = code;
	stack->frames[depth].first_line = first_line;
	stack->frames[depth].lasti = lasti < -2 || lasti > 0x7fffffff ? -1 : (__s32)lasti;
	stack->frame_flags[depth] = flags;
	stack->depth = depth + 1;
	intern_symbol(walk, code, first_line);
	return true;
}

static __always_inline __u64 hash_py_stack(const struct py_stack *stack)
{
	__u64 hash = 0xcbf29ce484222325ULL;

	for (__u32 i = 0; i < MAX_PY_FRAMES && i < stack->depth; i++) {
		hash = (hash ^ stack->frames[i].code) * 0x100000001b3ULL;
		hash = (hash ^ (((__u64)stack->frames[i].first_line << 32) |
				(__u32)stack->frames[i].lasti)) * 0x100000001b3ULL;
		hash = (hash ^ stack->frame_flags[i]) * 0x100000001b3ULL;
	}
	hash ^= stack->flags;
	return hash ? hash : 1;
}

static __always_inline __u64 store_py_stack(struct py_walk *walk, void *stacks)
{
	__u64 hash;

	if (!walk->stack.depth)
		return 0;
	hash = hash_py_stack(&walk->stack);
	if (bpf_map_lookup_elem(stacks, &hash))
		return hash;
	if (bpf_map_update_elem(stacks, &hash, &walk->stack, BPF_NOEXIST) == -E2BIG) {
		count_drop(DROP_PY_STACKS_MAP_FULL);
		return 0;
	}
	return hash;
}

/* Start walking; false when the thread runs no Python code just now. */
static __always_inline bool begin_py_walk(struct task_struct *task, struct sample_key *key,
					  __u32 buffer)
{
	struct py_proc *proc;
	struct py_walk *walk;
	__u32 zero = 0;

	proc = bpf_map_lookup_elem(&py_procs, &key->pid);
	walk = bpf_map_lookup_elem(&py_walks, &zero);
	if (!proc || !walk)
		return false;
	count_py_stat(PY_STAT_SAMPLES);
	walk->proc = *proc;
	walk->frame = top_frame(task, proc);
	if (!walk->frame) {
		count_py_stat(PY_STAT_NO_THREAD_STATE);
		return false;
	}
	walk->key = *key;
	walk->buffer = buffer;
	walk->runs = 0;
	walk->stack.depth = 0;
	walk->stack.flags = 0;
	return true;
}

SEC("perf_event")
int walk_python(struct bpf_perf_event_data *ctx)
{
	struct py_walk *walk;
	__u32 zero = 0;

	walk = bpf_map_lookup_elem(&py_walks, &zero);
	if (!walk)
		return 0;
	for (int i = 0; i < PY_FRAMES_PER_PROG && walk->frame; i++) {
		if (!walk_frame(walk)) {
			count_drop(DROP_PY_READ_FAILED);
			walk->frame = 0;
		}
	}
	walk->runs += 1;
	if (walk->frame && walk->runs < PY_MAX_PROGS)
		bpf_tail_call(ctx, &programs, PROG_WALK_PYTHON);
	if (walk->frame)	/* out of runs: more shims than frames */
		walk->stack.flags |= PY_STACK_TRUNCATED;
	if (walk->stack.flags & PY_STACK_TRUNCATED)
		count_py_stat(PY_STAT_TRUNCATED);
	if (walk->buffer == 0) {
		walk->key.python_stack = store_py_stack(walk, &py_stacks_0);
		count_sample(&counts_0, &walk->key);
	} else {
		walk->key.python_stack = store_py_stack(walk, &py_stacks_1);
		count_sample(&counts_1, &walk->key);
	}
	return 0;
}

/* --- native stacks ---------------------------------------------------- */

#include "native.bpf.h"

/* Count a sample whose stacks are known, after its Python walk if it has one. */
static __always_inline void finish_sample(void *ctx, struct sample_key *key, __u32 buffer)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct pid_config *pc = bpf_map_lookup_elem(&pids, &key->pid);

	if (profile_config.python_enabled && pc && pc->python && pc->collect_user &&
	    begin_py_walk(task, key, buffer)) {
		/* counts the sample when done; on failure count it here */
		bpf_tail_call(ctx, &programs, PROG_WALK_PYTHON);
	}
	if (buffer == 0)
		count_sample(&counts_0, key);
	else
		count_sample(&counts_1, key);
}

SEC("perf_event")
int walk_native(struct bpf_perf_event_data *ctx)
{
	enum unwind_stat end = UNWIND_STAT_MAX;
	struct native_walk *walk;
	__u32 zero = 0;

	walk = bpf_map_lookup_elem(&native_walks, &zero);
	if (!walk)
		return 0;
	for (int i = 0; i < NATIVE_FRAMES_PER_PROG && end == UNWIND_STAT_MAX; i++)
		end = step_native(walk);
	walk->runs += 1;
	if (end == UNWIND_STAT_MAX && walk->runs < NATIVE_MAX_PROGS)
		bpf_tail_call(ctx, &programs, PROG_WALK_NATIVE);
	count_unwind(end == UNWIND_STAT_MAX ? UNWIND_END_DEPTH : end);
	if (walk->buffer == 0)
		walk->key.user_stack = store_stack(&stacks_0, &walk->trace, walk->depth);
	else
		walk->key.user_stack = store_stack(&stacks_1, &walk->trace, walk->depth);
	finish_sample(ctx, &walk->key, walk->buffer);
	return 0;
}

/* --- sampling ---------------------------------------------------------- */

static __always_inline void record(struct bpf_perf_event_data *ctx, struct pid_config *pc,
				   __u32 tgid, __u32 buffer, void *stacks)
{
	struct sample_key key = { .pid = tgid };
	bool user_mode = sampled_in_user_mode(ctx);
	__u32 zero = 0;
	__u64 *total;

	total = bpf_map_lookup_elem(&sample_total, &zero);
	if (total)
		*total += 1;

	if (pc->collect_kernel && !user_mode)
		key.kernel_stack = capture_stack(ctx, stacks, 1, 0);
	if (pc->collect_user && pc->native && profile_config.native_enabled) {
		if (begin_native_walk(ctx, &key, buffer, user_mode))
			bpf_tail_call(ctx, &programs, PROG_WALK_NATIVE);
		count_drop(DROP_UNWIND_FAILED);
	}
	if (pc->collect_user)
		key.user_stack = capture_stack(ctx, stacks, 0, BPF_F_USER_STACK);
	finish_sample(ctx, &key, buffer);
}

SEC("perf_event")
int do_sample(struct bpf_perf_event_data *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 flags = BPF_CORE_READ(task, flags);
	struct pid_config *pc;
	struct control *ctl;
	__u32 zero = 0;

	if (tgid == 0 || flags & PF_KTHREAD)
		return 0;
	pc = bpf_map_lookup_elem(&pids, &tgid);
	/*
	 * A process tearing itself down is still sampled after the exit
	 * tracepoint has forgotten it (the tracepoint fires early in do_exit):
	 * tracking it again would leave a stale entry for a dead pid.
	 */
	if (!pc && !(flags & PF_EXITING))
		pc = track_new_pid(task, tgid);
	if (!pc || pc->state == PID_STATE_IGNORE)
		return 0;
	ctl = bpf_map_lookup_elem(&control, &zero);
	if (!ctl)
		return 0;
	if (ctl->active_buffer == 0)
		record(ctx, pc, tgid, 0, &stacks_0);
	else
		record(ctx, pc, tgid, 1, &stacks_1);
	return 0;
}

SEC("tp/sched/sched_process_exec")
int handle_exec(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	/* the new image may not be Python, or another version of it */
	bpf_map_delete_elem(&py_procs, &tgid);
	if (bpf_map_lookup_elem(&pids, &tgid))
		send_event(PID_EVENT_EXEC, tgid);
	return 0;
}

/*
 * The process is gone once its last thread exits, whichever thread that is:
 * a leader that called pthread_exit() goes first and leaves the rest
 * running. do_exit() counts the thread out of signal->live before this
 * tracepoint fires, so the last thread reads 0 here.
 */
SEC("tp/sched/sched_process_exit")
int handle_exit(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	bpf_map_delete_elem(&py_procs, &tgid);
	if (bpf_map_delete_elem(&pids, &tgid))
		return 0;
	send_event(PID_EVENT_EXIT, tgid);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
