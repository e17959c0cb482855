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
 * The walkers are reached by tail call, each in its own header: for a
 * process marked native, walk_native (native.bpf.h) unwinds the user stack
 * with its files' unwind tables; for a Python process, walk_python
 * (python.bpf.h) follows the interpreter's frames. The last one to run
 * counts the sample (finish_sample).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "profile.h"

#define PF_EXITING	0x00000004	/* include/linux/sched.h */
#define PROG_WALK_PYTHON	0
#define PROG_WALK_NATIVE	1

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
		__uint(map_flags, BPF_F_NO_PREALLOC);	\
		__uint(max_entries, 16384);			\
		__type(key, __u64);				\
		__type(value, struct stack_trace);		\
	} name SEC(".maps")

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} programs SEC(".maps");

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

static __always_inline void send_event(__u32 type, __u32 pid)
{
	struct pid_event event = { .type = type, .pid = pid };

	if (bpf_ringbuf_output(&events, &event, sizeof(event), 0))
		count_drop(DROP_EVENTS_FULL);
}

/*
 * What classifying a process needs, read where it runs now: sent when it is
 * first seen (NEW) and when it execs (a container's entry point is exec'd
 * after its runtime moved it into the container's cgroup).
 */
static __always_inline void send_process_event(__u32 type, struct task_struct *task, __u32 tgid)
{
	struct pid_event *event;
	const char *name;

	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		count_drop(DROP_EVENTS_FULL);
		return;
	}
	event->type = type;
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
		send_process_event(PID_EVENT_NEW, task, tgid);
	return bpf_map_lookup_elem(&pids, &tgid);
}

/* FNV-1a a 64-bit word at a time: the hash every stack is stored by. */
#define FNV_OFFSET_BASIS	0xcbf29ce484222325ULL

static __always_inline __u64 fnv_mix(__u64 hash, __u64 word)
{
	return (hash ^ word) * 0x100000001b3ULL;
}

/* 0 is kept for "no stack". */
static __always_inline __u64 hash_stack(const struct stack_trace *trace, __u32 depth)
{
	__u64 hash = FNV_OFFSET_BASIS;

	for (__u32 i = 0; i < MAX_STACK_DEPTH && i < depth; i++)
		hash = fnv_mix(hash, trace->ips[i]);
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
			count_drop(size ? DROP_USER_STACK_UNREADABLE : DROP_USER_STACK_MISSING);
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

/* --- walkers ------------------------------------------------------------ */

#include "python.bpf.h"
#include "native.bpf.h"

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
	if (pc->collect_user && profile_config.native_enabled &&
	    pc->native != NATIVE_FRAME_POINTERS) {
		if (begin_native_walk(ctx, &key, buffer, user_mode, pc->native))
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
	struct pid_config *pc;

	/* the new image may not be Python, or another version of it */
	bpf_map_delete_elem(&py_procs, &tgid);
	pc = bpf_map_lookup_elem(&pids, &tgid);
	if (!pc)
		return 0;
	/* its mappings are the old image's until userspace loads the new tables */
	if (pc->native == NATIVE_TABLES)
		pc->native = NATIVE_WAITING;
	send_process_event(PID_EVENT_EXEC, (struct task_struct *)bpf_get_current_task(), tgid);
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
