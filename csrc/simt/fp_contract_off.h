// Included first by each file that compiles the CUDA kernels for the emulation: every
// function of that file, torch's inline ones included, keeps a * b + c as two roundings
// wherever the source writes it so. GCC would otherwise fuse some into FMAs as it sees fit
// per instantiation, and the int32- and int64-offset kernels would differ in bits.
// (A pragma, not a flag: the C++ CPU kernels in the same extension keep their FMAs.)
#pragma once
#pragma GCC optimize("fp-contract=off")
