//go:build !linux

package gateway

// diskFree is not known on this platform.
func diskFree(string) (uint64, bool) { return 0, false }
