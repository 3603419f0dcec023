package baton

//go:generate bash tools/gen-proto.sh
