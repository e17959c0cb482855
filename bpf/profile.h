/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The contract between profile.bpf.c and agent/ebpf/session.py: constants,
 * map keys and values, event records and drop reasons. No logic lives here.
 * Every struct is mirrored field for field by a ctypes.Structure in
 * agent/ebpf/layout.py; a test compares both against the object's BTF.
 */
#ifndef __PROFILE_H
#define __PROFILE_H

#define PERF_MAX_STACK_DEPTH	127
#define COUNT_BUFFERS		2

/* What userspace decided about a process (pid_config.state). */
enum pid_state {
	PID_STATE_PENDING = 1,	/* seen by the kernel, not yet classified */
	PID_STATE_PROFILE = 2,	/* matches a target: count its samples */
	PID_STATE_IGNORE = 3,	/* matches no target: one lookup per tick */
};

/* Why a sample or part of it was lost; the index of the drops map. */
enum drop_reason {
	DROP_USER_STACK_MISSING = 0,	/* bpf_get_stack() found no user stack */
	DROP_STACKS_MAP_FULL,		/* a new stack had no room: sample kept without it */
	DROP_COUNTS_MAP_FULL,		/* the sample itself was lost */
	DROP_PID_MAP_FULL,		/* a new process could not be tracked */
	DROP_EVENTS_FULL,		/* a pid event could not be reported */
	DROP_REASON_MAX,
};

enum pid_event_type {
	PID_EVENT_NEW = 1,	/* first sample of an unknown process */
	PID_EVENT_EXEC = 2,	/* a tracked process called exec */
	PID_EVENT_EXIT = 3,	/* a tracked process exited */
};

/* Set in .rodata before load. */
struct profile_config {
	__u8 discover_new;	/* report and keep unknown pids as pending */
	__u8 collect_user;	/* defaults for pending pids */
	__u8 collect_kernel;
	__u8 _pad;
};

struct pid_config {
	__u8 state;
	__u8 collect_user;
	__u8 collect_kernel;
	__u8 _pad;
};

/* Stacks are stored by a 64-bit hash of their addresses; 0 means none. */
struct sample_key {
	__u32 pid;
	__u32 _pad;
	__u64 user_stack;
	__u64 kernel_stack;
};

/* Return addresses, leaf first, zero-filled past the last frame. */
struct stack_trace {
	__u64 ips[PERF_MAX_STACK_DEPTH];
};

struct pid_event {
	__u32 type;
	__u32 pid;
	__u32 ppid;
	__u32 _pad;
};

/* Key 0 of the control map: which counts/stacks buffer samples go to. */
struct control {
	__u32 active_buffer;
};

#endif /* __PROFILE_H */
