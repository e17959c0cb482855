/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The native walker: user stacks without frame pointers, unwound with the
 * tables userspace builds from each file's call-frame information
 * (agent/unwind/). For each frame it finds the mapping of the address in
 * unwind_mappings (an LPM trie keyed by pid and address), binary-searches
 * the file's rows in unwind_rows, computes the CFA and reads the return
 * address (CFA - 8) and, where saved, rbp from the user stack. Mappings
 * without a table (JIT code, files without CFI) take a frame-pointer step.
 *
 * The walk runs NATIVE_FRAMES_PER_PROG frames per program run and tail-calls
 * itself; its state lives in the per-CPU native_walks map. Included by
 * profile.bpf.c, which owns the maps it shares (programs, stacks, counts).
 */
#ifndef __NATIVE_BPF_H
#define __NATIVE_BPF_H

#define NATIVE_FRAMES_PER_PROG	16
#define NATIVE_MAX_PROGS	8	/* NATIVE_FRAMES_PER_PROG * NATIVE_MAX_PROGS >= MAX_STACK_DEPTH */
#define UNWIND_SEARCH_STEPS	21	/* rows per file: 2^21 at most (userspace checks) */
#define UCONTEXT_RBP		120	/* ucontext_t.uc_mcontext.rbp on x86-64 */
#define UCONTEXT_RSP		160
#define UCONTEXT_RIP		168

/* Resized by userspace (unwind_table_rows); mmapped: userspace writes rows directly. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct unwind_row);
} unwind_rows SEC(".maps");

/* Resized by userspace; entries are made on demand. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct unwind_mapping_key);
	__type(value, struct unwind_mapping);
} unwind_mappings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UNWIND_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} unwind_stats SEC(".maps");

/* A user stack being walked, carried across tail calls. */
struct native_walk {
	struct sample_key key;
	__u32 buffer;		/* the count/stack buffer the sample goes to */
	__u32 runs;
	__u32 depth;
	__u64 ip, sp, bp;
	__u8 exact_ip;		/* ip is not a return address: no -1 for the lookup */
	__u8 waiting;		/* no tables yet: record the leaf and stop */
	struct unwind_mapping mapping;	/* the last mapping found: callers often share it */
	struct stack_trace trace;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct native_walk);
} native_walks SEC(".maps");

static __always_inline void count_unwind(enum unwind_stat stat)
{
	__u32 key = stat;
	__u64 *value;

	value = bpf_map_lookup_elem(&unwind_stats, &key);
	if (value)
		*value += 1;
}

/* The user registers of the sampled task, also when the tick hit the kernel. */
static __always_inline bool begin_native_walk(struct bpf_perf_event_data *ctx,
					      struct sample_key *key, __u32 buffer, bool user_mode,
					      __u8 mode)
{
	struct native_walk *walk;
	struct pt_regs *regs;
	__u32 zero = 0;

	walk = bpf_map_lookup_elem(&native_walks, &zero);
	if (!walk)
		return false;
	if (user_mode) {
		walk->ip = ctx->regs.ip;
		walk->sp = ctx->regs.sp;
		walk->bp = ctx->regs.bp;
	} else {
		regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
		if (!regs)
			return false;
		walk->ip = BPF_CORE_READ(regs, ip);
		walk->sp = BPF_CORE_READ(regs, sp);
		walk->bp = BPF_CORE_READ(regs, bp);
	}
	if (!walk->ip)
		return false;
	walk->key = *key;
	walk->buffer = buffer;
	walk->runs = 0;
	walk->depth = 0;
	walk->exact_ip = 1;
	walk->waiting = mode == NATIVE_WAITING;
	walk->mapping.end = 0;
	/* equal stacks must be equal values in the stacks map: zero past the depth */
	__builtin_memset(&walk->trace, 0, sizeof(walk->trace));
	return true;
}

/*
 * An address in no known mapping may be a library mapped since userspace
 * last looked (dlopen): ask it to look again, once a second at most.
 */
static __always_inline void ask_for_mappings(__u32 pid)
{
	struct pid_config *pc = bpf_map_lookup_elem(&pids, &pid);
	__u32 now = bpf_ktime_get_ns() >> 30;

	if (!pc || pc->mappings_asked == now)
		return;
	pc->mappings_asked = now;
	send_event(PID_EVENT_MAPPINGS, pid);
}

/* The last row whose pc is at or below pc, among count rows from start. */
static __always_inline struct unwind_row *find_row(__u32 start, __u32 count, __u32 pc)
{
	struct unwind_row *row;
	__u32 low = 0, high = count, mid, index;

	/* invariant: rows before low start at or below pc; rows from high above it */
	for (int i = 0; i < UNWIND_SEARCH_STEPS && low < high; i++) {
		mid = low + (high - low) / 2;
		index = start + mid;
		row = bpf_map_lookup_elem(&unwind_rows, &index);
		if (!row)
			return NULL;
		if (row->pc <= pc)
			low = mid + 1;
		else
			high = mid;
	}
	if (low == 0)
		return NULL;
	index = start + low - 1;
	return bpf_map_lookup_elem(&unwind_rows, &index);
}

static __always_inline bool read_user_u64(__u64 *out, __u64 address)
{
	return bpf_probe_read_user(out, sizeof(*out), (void *)address) == 0;
}

/* The caller of a frame that has no table: its frame pointer chain. */
static __always_inline enum unwind_stat step_frame_pointer(struct native_walk *walk)
{
	__u64 bp = walk->bp, ra;

	if (!bp)
		return UNWIND_END_FP_CHAIN;
	if (!read_user_u64(&ra, bp + 8) || !read_user_u64(&walk->bp, bp))
		return UNWIND_END_READ_FAULT;
	walk->sp = bp + 16;
	walk->ip = ra;
	count_unwind(UNWIND_FRAMES_FP);
	return UNWIND_STAT_MAX;
}

/* The interrupted registers of a signal trampoline's frame. */
static __always_inline enum unwind_stat step_signal(struct native_walk *walk)
{
	__u64 sp = walk->sp;

	if (!read_user_u64(&walk->bp, sp + UCONTEXT_RBP) ||
	    !read_user_u64(&walk->ip, sp + UCONTEXT_RIP) ||
	    !read_user_u64(&walk->sp, sp + UCONTEXT_RSP))
		return UNWIND_END_READ_FAULT;
	walk->exact_ip = 1;	/* where the signal struck, not a return address */
	count_unwind(UNWIND_FRAMES_TABLE);
	return UNWIND_STAT_MAX;
}

/* The caller of a frame by its file's row. */
static __always_inline enum unwind_stat step_row(struct native_walk *walk,
						 const struct unwind_row *row)
{
	__u64 cfa, ra;

	switch (row->cfa_type) {
	case CFA_RSP:
		cfa = walk->sp + row->cfa_offset;
		break;
	case CFA_RBP:
		cfa = walk->bp + row->cfa_offset;
		break;
	case CFA_PLT:
		cfa = walk->sp + row->cfa_offset + ((walk->ip & 15) >= (__u64)row->rbp_offset ? 8 : 0);
		break;
	case CFA_SIGNAL:
		return step_signal(walk);
	case CFA_END:
		return UNWIND_END_OUTERMOST;
	case CFA_NONE:
		return UNWIND_END_NO_ROW;
	default:
		return UNWIND_END_UNSUPPORTED;
	}
	if (row->cfa_type != CFA_PLT && row->rbp_offset == -2) {
		/* rbp pushed right below the return address (push rbp): one read for both */
		__u64 saved[2];

		if (bpf_probe_read_user(saved, sizeof(saved), (void *)(cfa - 16)))
			return UNWIND_END_READ_FAULT;
		walk->bp = saved[0];
		ra = saved[1];
	} else {
		if (!read_user_u64(&ra, cfa - 8))
			return UNWIND_END_READ_FAULT;
		if (row->cfa_type != CFA_PLT && row->rbp_offset &&
		    !read_user_u64(&walk->bp, cfa + (__s64)row->rbp_offset * 8))
			return UNWIND_END_READ_FAULT;
	}
	walk->sp = cfa;
	walk->ip = ra;
	walk->exact_ip = 0;
	count_unwind(UNWIND_FRAMES_TABLE);
	return UNWIND_STAT_MAX;
}

/* Record the current frame and move to its caller; UNWIND_STAT_MAX: go on. */
static __always_inline enum unwind_stat step_native(struct native_walk *walk)
{
	struct unwind_mapping_key key = { .prefixlen = 96, .pid = walk->key.pid };
	struct unwind_mapping *mapping, *found;
	struct unwind_row *row;
	__u32 depth = walk->depth;
	__u64 lookup;

	if (!walk->ip)
		return UNWIND_END_FP_CHAIN;
	if (walk->waiting) {
		/* the tick struck here: the one frame known for sure without tables */
		walk->trace.ips[0] = walk->ip;
		walk->depth = 1;
		return UNWIND_END_WAITING;
	}
	if (depth >= MAX_STACK_DEPTH - 1) {
		walk->trace.ips[MAX_STACK_DEPTH - 1] = STACK_TRUNCATED_IP;
		walk->depth = MAX_STACK_DEPTH;
		return UNWIND_END_DEPTH;
	}
	/* a return address may point past a call that never returns: look up the call */
	lookup = walk->exact_ip ? walk->ip : walk->ip - 1;
	if (lookup < walk->mapping.start || lookup >= walk->mapping.end) {
		key.address = bpf_cpu_to_be64(lookup);
		found = bpf_map_lookup_elem(&unwind_mappings, &key);
		if (!found) {
			ask_for_mappings(walk->key.pid);
			return UNWIND_END_NO_MAPPING;	/* junk is never recorded as a frame */
		}
		walk->mapping = *found;
	}
	mapping = &walk->mapping;
	walk->trace.ips[depth & (MAX_STACK_DEPTH - 1)] = walk->ip;
	walk->depth = depth + 1;
	if (!mapping->table_rows)
		return step_frame_pointer(walk);
	row = find_row(mapping->table_start, mapping->table_rows, lookup - mapping->bias);
	if (!row)
		return UNWIND_END_NO_ROW;
	return step_row(walk, row);
}

#endif /* __NATIVE_BPF_H */
