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
#define MAX_STACK_DEPTH		128	/* a walked user stack: 127 frames and a marker */
#define STACK_TRUNCATED_IP	0xfffffffffffffffeULL	/* the last slot of a cut stack */
#define COUNT_BUFFERS		2
#define MAX_PY_FRAMES		128	/* deeper Python stacks are truncated */
#define PY_NAME_LEN		96	/* bytes of co_qualname (co_name before 3.11) kept */
#define PY_FILE_LEN		160	/* bytes of co_filename kept: its tail when longer */
#define PY_LINETABLE_LEN	1024	/* bytes of a line table sent (99% of 3.11+ stdlib's fit) */
#define PY_NO_OFFSET		0xffff	/* a field this CPython version does not have */
#define TASK_COMM_LEN		16
#define CGROUP_NAME_LEN		96	/* the leaf of the cgroup path: holds a container ID */

/* What userspace decided about a process (pid_config.state). */
enum pid_state {
	PID_STATE_PENDING = 1,	/* seen by the kernel, not yet classified */
	PID_STATE_PROFILE = 2,	/* matches a target: count its samples */
	PID_STATE_IGNORE = 3,	/* matches no target: one lookup per tick */
};

/* Why a sample or part of it was lost; the index of the drops map. */
enum drop_reason {
	DROP_USER_STACK_MISSING = 0,	/* no user stack: the task has no user registers */
	DROP_STACKS_MAP_FULL,		/* a new stack had no room: sample kept without it */
	DROP_COUNTS_MAP_FULL,		/* the sample itself was lost */
	DROP_PID_MAP_FULL,		/* a new process could not be tracked */
	DROP_EVENTS_FULL,		/* a pid event could not be reported */
	DROP_PY_STACKS_MAP_FULL,	/* a new Python stack had no room: sample kept without it */
	DROP_PY_READ_FAILED,		/* Python memory unreadable: the Python stack is cut there */
	DROP_UNWIND_FAILED,		/* the native walk could not start: frame pointers used */
	DROP_USER_STACK_UNREADABLE,	/* bpf_get_stack() failed reading the user stack */
	DROP_REASON_MAX,
};

enum pid_event_type {
	PID_EVENT_NEW = 1,	/* first sample of an unknown process */
	PID_EVENT_EXEC = 2,	/* a tracked process called exec */
	PID_EVENT_EXIT = 3,	/* a tracked process exited */
	PID_EVENT_MAPPINGS = 4,	/* its walk met an address in no known mapping (dlopen?) */
};

/* What happens to Python stacks, counted per CPU in the py_stats map. */
enum py_stat {
	PY_STAT_SAMPLES = 0,		/* samples of Python processes walked */
	PY_STAT_NO_THREAD_STATE,	/* the thread had no Python frame to walk */
	PY_STAT_TRUNCATED,		/* stacks deeper than MAX_PY_FRAMES */
	PY_STAT_SYMBOLS_NEW,		/* names copied into py_symbols (LRU: may evict) */
	PY_STAT_LINES_LOST,		/* a new code object's line table unread or not sent */
	PY_STAT_MAX,
};

/* What happens to native stacks walked with unwind tables, per CPU (unwind_stats). */
enum unwind_stat {
	UNWIND_FRAMES_TABLE = 0,	/* frames unwound with a file's table */
	UNWIND_FRAMES_FP,		/* frames unwound with frame pointers (no table) */
	UNWIND_END_OUTERMOST,		/* the return address is undefined: a whole stack */
	UNWIND_END_FP_CHAIN,		/* rbp or the return address became 0 */
	UNWIND_END_NO_MAPPING,		/* an address in no known mapping */
	UNWIND_END_NO_ROW,		/* in a mapped file, but no FDE covers the address */
	UNWIND_END_UNSUPPORTED,		/* a rule the table cannot express */
	UNWIND_END_READ_FAULT,		/* the user stack could not be read */
	UNWIND_END_DEPTH,		/* deeper than MAX_STACK_DEPTH - 1: truncated */
	UNWIND_END_WAITING,		/* its tables were not loaded yet: the leaf alone */
	UNWIND_STAT_MAX,
};

/* How a row finds the caller's frame (unwind_row.cfa_type). */
enum cfa_type {
	CFA_NONE = 0,		/* no FDE covers the address */
	CFA_RSP = 1,		/* CFA = rsp + cfa_offset */
	CFA_RBP = 2,		/* CFA = rbp + cfa_offset */
	CFA_PLT = 3,		/* CFA = rsp + cfa_offset + ((rip & 15) >= rbp_offset ? 8 : 0) */
	CFA_SIGNAL = 4,		/* a signal trampoline: registers in the ucontext at rsp */
	CFA_END = 5,		/* the outermost frame */
	CFA_UNSUPPORTED = 6,
};

/* One row of a file's unwind table (agent/unwind/table.py builds them). */
struct unwind_row {
	__u32 pc;		/* first file address the row covers */
	__u8 cfa_type;
	__s8 rbp_offset;	/* rbp saved at CFA + 8 * rbp_offset; 0: unchanged */
	__u16 cfa_offset;
};

/* unwind_mappings key: a pid and an address, matched by prefix. */
struct unwind_mapping_key {
	__u32 prefixlen;	/* 32 bits of pid, then the address's high bits */
	__u32 pid;
	__u64 address;		/* big endian: prefixes match from the top bit */
};

/* Where a mapping's table lies in unwind_rows; rows == 0: frame pointers. */
struct unwind_mapping {
	__u64 start;		/* the mapping's addresses: [start, end) */
	__u64 end;
	__u64 bias;		/* file address = address - bias */
	__u32 table_start;
	__u32 table_rows;
};

/* Set in .rodata before load. */
struct profile_config {
	__u8 discover_new;	/* report and keep unknown pids as pending */
	__u8 collect_user;	/* defaults for pending pids */
	__u8 collect_kernel;
	__u8 python_enabled;	/* walk Python stacks of processes in py_procs */
	__u8 native_enabled;	/* walk user stacks with unwind tables where marked */
};

/* How a process's user stacks are walked while native unwinding is on (pid_config.native). */
enum native_mode {
	NATIVE_WAITING = 0,		/* tables not loaded yet (new, or just exec'd): the leaf only */
	NATIVE_TABLES = 1,		/* walk_native with its files' tables */
	NATIVE_FRAME_POINTERS = 2,	/* no tables could be had: bpf_get_stack */
};

struct pid_config {
	__u8 state;
	__u8 collect_user;
	__u8 collect_kernel;
	__u8 python;		/* has an entry in py_procs */
	__u8 native;		/* enum native_mode */
	__u8 _pad[3];
	__u32 mappings_asked;	/* when a mappings event was last sent, in ~1 s units */
};

/* Whether the sampled thread held the GIL (sample_key.gil). */
enum py_gil {
	PY_GIL_UNKNOWN = 0,	/* not a Python thread, or the GIL unreadable */
	PY_GIL_HELD = 1,
	PY_GIL_RELEASED = 2,
};

/* Stacks are stored by a 64-bit hash of their contents; 0 means none. */
struct sample_key {
	__u32 pid;
	__u32 gil;		/* enum py_gil */
	__u64 user_stack;
	__u64 kernel_stack;
	__u64 python_stack;
};

/* Return addresses, leaf first, zero-filled past the last frame. */
struct stack_trace {
	__u64 ips[MAX_STACK_DEPTH];
};

/*
 * What a process looked like at its first sample, captured in the kernel so
 * that a process gone before userspace reads /proc is still classified.
 */
struct pid_event {
	__u32 type;
	__u32 pid;
	__u32 ppid;
	__u32 _pad;
	__u64 cgroup_id;			/* cgroup v2 id; 0 on exec and exit */
	char comm[TASK_COMM_LEN];
	char cgroup_name[CGROUP_NAME_LEN];	/* last component of its v2 cgroup path */
};

/*
 * Where one CPython version keeps what the walk reads, in bytes; set by
 * agent/python/offsets.py. Windows are the bytes read at once from a frame
 * and from a code object: every offset below lies inside them.
 */
struct py_offsets {
	__u16 tstate_frame;	/* frame, cframe or current_frame */
	__u16 cframe_frame;	/* _PyCFrame.current_frame, or PY_NO_OFFSET */
	__u16 frame_code;
	__u16 frame_previous;
	__u16 frame_instr;	/* f_lasti (int) or prev_instr/instr_ptr */
	__u16 frame_owner;	/* or PY_NO_OFFSET */
	__u16 frame_is_entry;	/* 3.11 only, or PY_NO_OFFSET */
	__u16 frame_window;
	__u16 code_first_line;
	__u16 code_filename;
	__u16 code_name;
	__u16 code_linetable;	/* co_lnotab (3.8, 3.9) or co_linetable */
	__u16 code_adaptive;	/* 3.11+, or PY_NO_OFFSET */
	__u16 code_window;
	__u16 unicode_ascii_data;
	__u16 unicode_compact_data;
	__u16 gil_last_holder;	/* in _gil_runtime_state: the thread state that took it last */
	__u16 gil_locked;	/* ... and whether it is held (an int) */
	__u8 owner_cstack;	/* owner value of shim frames; 0 when none */
	__u8 entry_every_frame;	/* before 3.11 each frame has its own eval loop */
};

/* One Python process: the py_procs value. */
struct py_proc {
	__u64 code_type;	/* &PyCode_Type: frames whose code is not a code object are skipped */
	__u64 gil;		/* the main interpreter's _gil_runtime_state; 0: not known */
	__u32 tss_key;		/* pthread key of the thread state */
	__u16 tsd_base;		/* glibc: struct pthread.specific_1stblock */
	__u16 tsd_stride;	/* bytes per key */
	__u16 tsd_data;		/* offset of the value in a slot */
	__u16 _pad[3];
	struct py_offsets offsets;
};

/* A Python frame: the code object and how far into it execution is. */
struct py_frame {
	__u64 code;
	__u32 first_line;
	__s32 lasti;		/* bytes past co_code_adaptive (3.11+), or f_lasti */
};

#define PY_FRAME_ENTRY		1	/* the last frame of one C-level eval loop run */
#define PY_STACK_TRUNCATED	1

/* Python frames leaf first: the value of py_stacks_0/1. */
struct py_stack {
	__u32 depth;
	__u32 flags;
	struct py_frame frames[MAX_PY_FRAMES];
	__u8 frame_flags[MAX_PY_FRAMES];
};

/* A code object of one process; first_line tells a reused address apart. */
struct py_symbol_key {
	__u32 pid;
	__u32 first_line;
	__u64 code;
};

/* Raw str bytes: kind is 1 (Latin-1), 2 (UCS-2) or 4 (UCS-4). */
struct py_symbol {
	__u16 name_len;
	__u16 file_len;
	__u8 name_kind;
	__u8 file_kind;
	__u8 name_truncated;
	__u8 file_truncated;	/* file holds the tail of the name */
	char name[PY_NAME_LEN];
	char file[PY_FILE_LEN];
};

/*
 * The line table of a code object seen for the first time (a py_lines
 * record): userspace keeps it, so lines are known after the process exits.
 * The record ends after the copied bytes.
 */
struct py_code_lines {
	__u32 pid;
	__u32 first_line;
	__u64 code;
	__u32 table_len;	/* the whole table's length in bytes */
	__u32 copied;		/* bytes of table sent: fewer than table_len when cut */
	__u8 table[PY_LINETABLE_LEN];
};

/* Key 0 of the control map: which counts/stacks buffer samples go to. */
struct control {
	__u32 active_buffer;
};

#endif /* __PROFILE_H */
