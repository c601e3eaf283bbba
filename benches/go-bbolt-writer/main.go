// Command go-bbolt-writer is the Go reference point for benchmarking the trivy:db bbolt writer:
// it loads key/value entries from an NDJSON file into a new bbolt file with the real Go bbolt
// (the library Trivy reads trivy.db with) and prints the elapsed wall-clock seconds.
//
// Usage:
//
//	go-bbolt-writer [-batch N] [-nosync] [-f] KV.ndjson OUT.db
//
// Each input line is one entry:
//
//	{"b":["root","pkg"],"k":"key","v":"<value string>"}
//
// "b" is the bucket path (1 or 2 names; buckets are created as needed), "k" the key (non-empty),
// "v" the value, stored as its UTF-8 bytes. Empty lines are ignored. Entries are written in input
// order, -batch entries per read-write transaction (0 = everything in one transaction).
// A later entry with the same bucket path and key overwrites the earlier one (bbolt Put).
//
// With -check DB instead, it opens DB read-only, runs bbolt's own consistency check
// (tx.Check: every page reachable once, freelist, tree order) and walks every bucket, printing
// "<keys> <buckets>" on stdout; exit status 1 with the problems on stderr if the check fails.
//
// Output: the elapsed seconds (open + parse + write + commit + close, i.e. including fsync unless
// -nosync) as a single number on stdout; a summary line on stderr. Exit status 1 on any error,
// 2 on bad usage. OUT.db must not exist unless -f is given (then it is replaced).
//
// Build (Debian packages golang-go and golang-github-coreos-bbolt-dev, GOPATH mode):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o /tmp/go-bbolt-writer ./benches/go-bbolt-writer
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

type entry struct {
	B []string `json:"b"`
	K *string  `json:"k"`
	V *string  `json:"v"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go-bbolt-writer: "+format+"\n", args...)
	os.Exit(1)
}

// writer holds the open transaction and the bucket handles valid inside it.
type writer struct {
	db      *bolt.DB
	tx      *bolt.Tx
	buckets map[string]*bolt.Bucket // key: bucket path joined with "\x00"
	inTx    int
	txs     int
	nbkt    int
}

func (w *writer) begin() error {
	tx, err := w.db.Begin(true)
	if err != nil {
		return err
	}
	w.tx, w.inTx, w.buckets = tx, 0, make(map[string]*bolt.Bucket)
	return nil
}

func (w *writer) commit() error {
	if w.tx == nil {
		return nil
	}
	err := w.tx.Commit()
	w.tx, w.buckets = nil, nil
	w.txs++
	return err
}

func (w *writer) bucket(path []string) (*bolt.Bucket, error) {
	id := path[0]
	if len(path) == 2 {
		id += "\x00" + path[1]
	}
	if b, ok := w.buckets[id]; ok {
		return b, nil
	}
	root := w.buckets[path[0]]
	if root == nil {
		if root = w.tx.Bucket([]byte(path[0])); root == nil {
			var err error
			if root, err = w.tx.CreateBucket([]byte(path[0])); err != nil {
				return nil, fmt.Errorf("create bucket %q: %w", path[0], err)
			}
			w.nbkt++
		}
		w.buckets[path[0]] = root
	}
	if len(path) == 1 {
		return root, nil
	}
	b := root.Bucket([]byte(path[1]))
	if b == nil {
		var err error
		if b, err = root.CreateBucket([]byte(path[1])); err != nil {
			return nil, fmt.Errorf("create bucket %q/%q: %w", path[0], path[1], err)
		}
		w.nbkt++
	}
	w.buckets[id] = b
	return b, nil
}

// check verifies an existing file with Go bbolt: tx.Check, then a walk of every bucket.
func check(path string) {
	db, err := bolt.Open(path, 0o444, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		fail("open %s: %v", path, err)
	}
	defer db.Close()
	var keys, buckets, problems int
	err = db.View(func(tx *bolt.Tx) error {
		for cerr := range tx.Check() {
			fmt.Fprintf(os.Stderr, "go-bbolt-writer: check: %v\n", cerr)
			problems++
		}
		var walk func(b *bolt.Bucket) error
		walk = func(b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				if v == nil {
					buckets++
					return walk(b.Bucket(k))
				}
				keys++
				return nil
			})
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			buckets++
			return walk(b)
		})
	})
	if err != nil {
		fail("walk %s: %v", path, err)
	}
	if problems > 0 {
		fail("%s: %d consistency problems", path, problems)
	}
	fmt.Printf("%d %d\n", keys, buckets)
}

func main() {
	checkPath := flag.String("check", "", "verify this existing bbolt file instead of writing one")
	batch := flag.Int("batch", 100000, "entries per read-write transaction (0 = one transaction)")
	noSync := flag.Bool("nosync", false, "skip fsync on commit (bbolt DB.NoSync)")
	force := flag.Bool("f", false, "replace OUT.db if it exists")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: go-bbolt-writer [-batch N] [-nosync] [-f] KV.ndjson OUT.db | -check DB")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *checkPath != "" {
		check(*checkPath)
		return
	}
	if flag.NArg() != 2 || *batch < 0 {
		flag.Usage()
		os.Exit(2)
	}
	inPath, outPath := flag.Arg(0), flag.Arg(1)

	start := time.Now()
	in, err := os.Open(inPath)
	if err != nil {
		fail("%v", err)
	}
	defer in.Close()
	if _, err := os.Stat(outPath); err == nil {
		if !*force {
			fail("%s exists (use -f to replace it)", outPath)
		}
		if err := os.Remove(outPath); err != nil {
			fail("%v", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		fail("%v", err)
	}
	db, err := bolt.Open(outPath, 0o644, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		fail("open %s: %v", outPath, err)
	}
	db.NoSync = *noSync
	w := &writer{db: db}

	r := bufio.NewReaderSize(in, 1<<20)
	var n, lineNo int
	for {
		line, rerr := r.ReadBytes('\n')
		if rerr != nil && rerr != io.EOF {
			fail("%s: read: %v", inPath, rerr)
		}
		if len(line) > 0 {
			lineNo++
		}
		if line = bytes.TrimSpace(line); len(line) > 0 {
			var e entry
			if err := json.Unmarshal(line, &e); err != nil {
				fail("%s:%d: %v", inPath, lineNo, err)
			}
			if len(e.B) < 1 || len(e.B) > 2 {
				fail("%s:%d: \"b\" must hold 1 or 2 bucket names, got %d", inPath, lineNo, len(e.B))
			}
			for _, name := range e.B {
				if name == "" {
					fail("%s:%d: empty bucket name", inPath, lineNo)
				}
			}
			if e.K == nil || *e.K == "" {
				fail("%s:%d: missing or empty \"k\"", inPath, lineNo)
			}
			if e.V == nil {
				fail("%s:%d: missing \"v\"", inPath, lineNo)
			}
			if w.tx == nil {
				if err := w.begin(); err != nil {
					fail("begin: %v", err)
				}
			}
			b, err := w.bucket(e.B)
			if err != nil {
				fail("%s:%d: %v", inPath, lineNo, err)
			}
			if err := b.Put([]byte(*e.K), []byte(*e.V)); err != nil {
				fail("%s:%d: put %q: %v", inPath, lineNo, *e.K, err)
			}
			n++
			w.inTx++
			if *batch > 0 && w.inTx >= *batch {
				if err := w.commit(); err != nil {
					fail("commit: %v", err)
				}
			}
		}
		if rerr == io.EOF {
			break
		}
	}
	if w.tx == nil && n == 0 {
		// no entries: still write one (empty) transaction so the file is a complete bbolt DB
		if err := w.begin(); err != nil {
			fail("begin: %v", err)
		}
	}
	if err := w.commit(); err != nil {
		fail("commit: %v", err)
	}
	if err := db.Close(); err != nil {
		fail("close: %v", err)
	}
	elapsed := time.Since(start).Seconds()
	st, _ := os.Stat(outPath)
	var size int64
	if st != nil {
		size = st.Size()
	}
	fmt.Fprintf(os.Stderr, "go-bbolt-writer: %d entries, %d buckets created, %d transactions, %d bytes -> %s\n",
		n, w.nbkt, w.txs, size, outPath)
	fmt.Printf("%.6f\n", elapsed)
}
