/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The Python walker: the sampled thread's CPython frames (3.8-3.13), read
 * with the offsets userspace puts in py_procs (agent/python/offsets.py).
 * The thread state is the value of the interpreter's pthread key; from its
 * current frame the walk follows each frame's previous pointer, copying the
 * code object, its first line and the instruction offset, the names of
 * each code object once into py_symbols, and its line table once to py_lines.
 * A code object is read once per walk (a recursion repeats it). PY_FRAMES_PER_PROG frames are read
 * per program run; walk_python (profile.bpf.c) tail-calls itself for more.
 */
#ifndef __PYTHON_BPF_H
#define __PYTHON_BPF_H

#define PY_FRAMES_PER_PROG	32
#define PY_MAX_PROGS		5	/* room for MAX_PY_FRAMES plus shim frames */
#define PY_FRAME_WINDOW		128	/* most bytes read at once from a frame */
#define PY_CODE_WINDOW		144	/* ... and from a code object */
#define PY_CODE_SLOTS		16	/* code objects kept during one walk (a power of 2) */
#define PY_INTERNED_SLOTS	512	/* code objects known to be in py_symbols, per CPU */
#define PY_INTERNED_NS		1000000000ULL	/* ... for a second: then looked up again */
#define PY_STR_HEADER		40	/* PyASCIIObject up to and including state */
#define PY_GIL_WINDOW		24	/* bytes read at once from _gil_runtime_state */
#define PY_BYTES_SIZE		16	/* PyBytesObject.ob_size, in every version */
#define PY_BYTES_DATA		32	/* PyBytesObject.ob_sval */

_Static_assert(PY_NAME_LEN < 256 && PY_FILE_LEN < 256, "read_str masks sizes with 0xff");

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
		__uint(map_flags, BPF_F_NO_PREALLOC);	\
		__uint(max_entries, 4096);			\
		__type(key, __u64);				\
		__type(value, struct py_stack);			\
	} name SEC(".maps")

/* Line tables of new code objects: userspace keeps them (py_code_lines). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} py_lines SEC(".maps");

PY_STACKS_MAP(py_stacks_0);
PY_STACKS_MAP(py_stacks_1);

/*
 * Code objects recently found or put in py_symbols, per CPU: a lookup in
 * this direct-mapped array costs far less than one in the LRU map. An entry
 * expires after PY_INTERNED_NS, so a code object evicted from py_symbols
 * meanwhile is put back soon.
 */
struct py_interned_slot {
	struct py_symbol_key key;
	__u64 until;		/* bpf_ktime_get_ns() */
};

struct py_interned {
	struct py_interned_slot slots[PY_INTERNED_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct py_interned);
} py_interned SEC(".maps");

/* A code object's window, read once per walk: recursion repeats code objects. */
struct py_code_slot {
	__u64 code;		/* 0: empty */
	__u8 window[PY_CODE_WINDOW];
};

/* A sample being walked, carried from do_sample across tail calls. */
struct py_walk {
	struct sample_key key;
	__u64 frame;		/* next frame to read; 0 when the walk is over */
	__u32 buffer;		/* the count/stack buffer the sample goes to */
	__u32 runs;		/* walk_python runs so far */
	__u64 now;		/* bpf_ktime_get_ns() as the walk began */
	struct py_proc proc;
	struct py_stack stack;
	struct py_symbol symbol;
	struct py_code_lines lines;
	__u8 frame_window[PY_FRAME_WINDOW];
	struct py_code_slot codes[PY_CODE_SLOTS];
	__u8 str_header[PY_STR_HEADER];
	__u8 gil_window[PY_GIL_WINDOW];
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

static __always_inline void count_py_stat(enum py_stat stat)
{
	__u32 key = stat;
	__u64 *value;

	value = bpf_map_lookup_elem(&py_stats, &key);
	if (value)
		*value += 1;
}

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
 * The sampled thread's PyThreadState: the value of the interpreter's
 * pthread key, read the way glibc's pthread_getspecific() does for keys
 * below 32.
 */
static __always_inline __u64 thread_state(struct task_struct *task, const struct py_proc *proc)
{
	__u64 tp = thread_pointer(task), tstate = 0;

	if (!tp || bpf_probe_read_user(&tstate, sizeof(tstate),
				       (void *)(tp + proc->tsd_base + proc->tss_key * proc->tsd_stride +
						proc->tsd_data)))
		return 0;
	return tstate;
}

static __always_inline __u64 top_frame(__u64 tstate, const struct py_offsets *off)
{
	__u64 frame = 0;

	if (bpf_probe_read_user(&frame, sizeof(frame), (void *)(tstate + off->tstate_frame)))
		return 0;
	if (frame && off->cframe_frame != PY_NO_OFFSET &&
	    bpf_probe_read_user(&frame, sizeof(frame), (void *)(frame + off->cframe_frame)))
		return 0;
	return frame;
}

/*
 * Whether the thread holds the GIL: it is locked and this thread took it
 * last (take_gil() sets last_holder; drop_gil() clears locked only).
 */
static __always_inline __u32 gil_state(struct py_walk *walk, __u64 tstate)
{
	const struct py_offsets *off = &walk->proc.offsets;

	if (!walk->proc.gil ||
	    bpf_probe_read_user(walk->gil_window, PY_GIL_WINDOW, (void *)walk->proc.gil))
		return PY_GIL_UNKNOWN;
	if (window_u64(walk->gil_window, PY_GIL_WINDOW, off->gil_last_holder) == tstate &&
	    window_u32(walk->gil_window, PY_GIL_WINDOW, off->gil_locked))
		return PY_GIL_HELD;
	return PY_GIL_RELEASED;
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

/*
 * Send the line table of a code object to userspace, which keeps it: read
 * from the process at the end, it would be gone with the process.
 */
static __always_inline void send_line_table(struct py_walk *walk, const __u8 *window, __u64 code,
					    __u32 first_line)
{
	struct py_code_lines *lines = &walk->lines;
	__u64 table, length = 0;
	__u32 size;

	table = window_u64(window, PY_CODE_WINDOW, walk->proc.offsets.code_linetable);
	if (!table ||
	    bpf_probe_read_user(&length, sizeof(length), (void *)(table + PY_BYTES_SIZE)) ||
	    (__s64)length < 0) {
		count_py_stat(PY_STAT_LINES_LOST);
		return;
	}
	size = length > PY_LINETABLE_LEN ? PY_LINETABLE_LEN : length;
	barrier_var(size);
	if (size > PY_LINETABLE_LEN ||
	    bpf_probe_read_user(lines->table, size, (void *)(table + PY_BYTES_DATA))) {
		count_py_stat(PY_STAT_LINES_LOST);
		return;
	}
	lines->pid = walk->key.pid;
	lines->first_line = first_line;
	lines->code = code;
	lines->table_len = length > 0xffffffff ? 0xffffffff : length;
	lines->copied = size;
	if (bpf_ringbuf_output(&py_lines, lines, offsetof(struct py_code_lines, table) + size, 0))
		count_py_stat(PY_STAT_LINES_LOST);
}

/* Copy the names of a code object into py_symbols, once per (pid, code). */
static __always_inline void intern_symbol(struct py_walk *walk, const __u8 *window, __u64 code,
					  __u32 first_line)
{
	const struct py_offsets *off = &walk->proc.offsets;
	struct py_symbol_key key = { .pid = walk->key.pid, .first_line = first_line, .code = code };
	struct py_symbol *symbol = &walk->symbol;
	struct py_interned_slot *slot;
	struct py_interned *interned;
	__u32 zero = 0;
	__u64 name, file;

	interned = bpf_map_lookup_elem(&py_interned, &zero);
	if (!interned)
		return;
	slot = &interned->slots[((code >> 4) ^ key.pid) & (PY_INTERNED_SLOTS - 1)];
	if (slot->key.code == code && slot->key.pid == key.pid &&
	    slot->key.first_line == first_line && walk->now < slot->until)
		return;
	slot->key = key;
	slot->until = walk->now + PY_INTERNED_NS;
	if (bpf_map_lookup_elem(&py_symbols, &key))
		return;
	name = window_u64(window, PY_CODE_WINDOW, off->code_name);
	file = window_u64(window, PY_CODE_WINDOW, off->code_filename);
	read_str(walk, name, symbol->name, PY_NAME_LEN, &symbol->name_len, &symbol->name_kind,
		 &symbol->name_truncated, false);
	read_str(walk, file, symbol->file, PY_FILE_LEN, &symbol->file_len, &symbol->file_kind,
		 &symbol->file_truncated, true);
	if (bpf_map_update_elem(&py_symbols, &key, symbol, BPF_NOEXIST))
		return;
	count_py_stat(PY_STAT_SYMBOLS_NEW);
	send_line_table(walk, window, code, first_line);
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
	struct py_code_slot *slot;
	bool first_seen = false;
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
	if (!code)
		return false;
	/* code objects are 16-byte aligned: the next bits pick the slot */
	slot = &walk->codes[(code >> 4) & (PY_CODE_SLOTS - 1)];
	if (slot->code != code) {
		slot->code = 0;
		if (off->code_window > PY_CODE_WINDOW ||
		    bpf_probe_read_user(slot->window, off->code_window, (void *)code))
			return false;
		slot->code = code;
		first_seen = true;
	}
	if (window_u64(slot->window, PY_CODE_WINDOW, 8) != walk->proc.code_type)
		return true;	/* ob_type: a 3.13 shim's Py_None, or not Python code */
	first_line = window_u32(slot->window, PY_CODE_WINDOW, off->code_first_line);
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
	if (first_seen)
		intern_symbol(walk, slot->window, code, first_line);
	return true;
}

static __always_inline __u64 hash_py_stack(const struct py_stack *stack)
{
	__u64 hash = FNV_OFFSET_BASIS;

	for (__u32 i = 0; i < MAX_PY_FRAMES && i < stack->depth; i++) {
		hash = fnv_mix(hash, stack->frames[i].code);
		hash = fnv_mix(hash, ((__u64)stack->frames[i].first_line << 32) |
				     (__u32)stack->frames[i].lasti);
		hash = fnv_mix(hash, stack->frame_flags[i]);
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
	__u64 tstate;

	proc = bpf_map_lookup_elem(&py_procs, &key->pid);
	walk = bpf_map_lookup_elem(&py_walks, &zero);
	if (!proc || !walk)
		return false;
	count_py_stat(PY_STAT_SAMPLES);
	walk->proc = *proc;
	tstate = thread_state(task, proc);
	walk->frame = tstate ? top_frame(tstate, &proc->offsets) : 0;
	if (!walk->frame) {
		count_py_stat(PY_STAT_NO_THREAD_STATE);
		return false;
	}
	walk->key = *key;
	walk->key.gil = gil_state(walk, tstate);
	walk->buffer = buffer;
	walk->runs = 0;
	walk->now = bpf_ktime_get_ns();
	walk->stack.depth = 0;
	walk->stack.flags = 0;
	for (int i = 0; i < PY_CODE_SLOTS; i++)
		walk->codes[i].code = 0;
	return true;
}

#endif /* __PYTHON_BPF_H */
