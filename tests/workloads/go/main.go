// A tiny Go program with named functions, a method and a closure, for the
// gopclntab tests (tests/symbols/test_gopclntab.py builds it with and without
// -ldflags=-s -w). It spins briefly so a profiler has something to sample.
package main

import (
	"fmt"
	"os"
)

type worker struct {
	total uint64
}

//go:noinline
func (w *worker) step(n uint64) {
	w.total += n*n + 1
}

//go:noinline
func hotLoop(w *worker, rounds int) {
	for i := 0; i < rounds; i++ {
		w.step(uint64(i))
	}
}

func main() {
	w := &worker{}
	scale := uint64(len(os.Args))
	spin := func(rounds int) {
		for i := 0; i < rounds; i++ {
			w.total ^= scale << (i % 7)
		}
		hotLoop(w, rounds)
	}
	spin(1 << 20)
	fmt.Println(w.total)
}
