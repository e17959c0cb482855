// A tiny Go program with named functions, a method and a closure, for the
// gopclntab tests (tests/symbols/test_gopclntab.py builds it with and without
// -ldflags=-s -w). It spins briefly, or for argv[1] seconds, so a profiler
// has something to sample.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
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
	if len(os.Args) > 1 {
		seconds, _ := strconv.Atoi(os.Args[1])
		for end := time.Now().Add(time.Duration(seconds) * time.Second); time.Now().Before(end); {
			spin(1 << 16)
		}
	}
	fmt.Println(w.total)
}
