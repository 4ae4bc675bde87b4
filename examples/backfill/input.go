package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// countLines counts the lines of r as readLines numbers them: a last line
// without a newline counts too.
func countLines(r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	last := byte('\n')
	for {
		k, err := r.Read(buf)
		if k > 0 {
			n += int64(bytes.Count(buf[:k], []byte{'\n'}))
			last = buf[k-1]
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	if last != '\n' {
		n++
	}
	return n, nil
}

// line is one input line, numbered from 1, without its line ending; or
// the error that ended reading (n is then the line it happened on).
type line struct {
	n    int64
	data []byte
	err  error
}

var errLineTooLong = errors.New("line too long")

// readLines reads r on a goroutine of its own, so that the loop notices ctx
// while a read of stdin waits, and sends its lines on the returned channel,
// closed at the end of r or after an error other than a long line. Closing
// quit stops it; done is closed when it has returned.
func readLines(r io.Reader, maxBytes int) (lines <-chan line, quit chan struct{}, done <-chan struct{}) {
	out := make(chan line, 256)
	quit = make(chan struct{})
	fin := make(chan struct{})
	go func() {
		defer close(fin)
		defer close(out)
		br := bufio.NewReaderSize(r, 64<<10)
		send := func(l line) bool {
			select {
			case out <- l:
				return true
			case <-quit:
				return false
			}
		}
		for n := int64(1); ; n++ {
			data, err := readLine(br, maxBytes)
			if err == io.EOF && len(data) == 0 {
				return
			}
			switch {
			case errors.Is(err, errLineTooLong):
				if !send(line{n: n, err: err}) {
					return
				}
				continue
			case err != nil && err != io.EOF:
				send(line{n: n, err: err})
				return
			}
			if !send(line{n: n, data: data}) || err == io.EOF {
				return
			}
		}
	}()
	return out, quit, fin
}

// readLine returns the next line without its "\n" or "\r\n", in a slice of
// its own; io.EOF with the last line when it has no newline, or alone at
// the end. A line longer than maxBytes is skipped to its end and reported
// as errLineTooLong.
func readLine(br *bufio.Reader, maxBytes int) ([]byte, error) {
	var acc []byte
	long := false
	for {
		chunk, err := br.ReadSlice('\n')
		if !long {
			if len(acc)+len(chunk) > maxBytes+2 { // room for "\r\n"
				long, acc = true, nil
			} else {
				acc = append(acc, chunk...)
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if long {
			if err == nil || err == io.EOF {
				return nil, fmt.Errorf("%w: more than %d bytes (see -max-line-bytes)", errLineTooLong, maxBytes)
			}
			return nil, err
		}
		acc = bytes.TrimSuffix(acc, []byte{'\n'})
		acc = bytes.TrimSuffix(acc, []byte{'\r'})
		if err == nil && acc == nil {
			acc = []byte{}
		}
		if len(acc) > maxBytes {
			return nil, fmt.Errorf("%w: more than %d bytes (see -max-line-bytes)", errLineTooLong, maxBytes)
		}
		return acc, err
	}
}
