// Package repotest holds tests about the repository as a whole (every
// package documented, ...); it has no code of its own.
package repotest
