// Verilator main of tb_file.v. Unlike `verilator --binary`'s generated main, it turns the bench's $fatal
// into an exit status of 1 instead of an abort (SIGABRT, maybe a core file): a failing bench is an
// ordinary result for the test that runs it.
#include <cstdio>
#include <memory>

#include "Vtb_file.h"
#include "verilated.h"

int main(int argc, char** argv) {
  const std::unique_ptr<VerilatedContext> context{new VerilatedContext};
  context->commandArgs(argc, argv);
  context->fatalOnError(false);  // $fatal / $stop: record the error and finish, do not abort
  const std::unique_ptr<Vtb_file> top{new Vtb_file{context.get(), "TOP"}};
  while (!context->gotFinish()) {
    top->eval();
    if (!top->eventsPending()) break;
    context->time(top->nextTimeSlot());
  }
  top->final();
  if (!context->gotFinish()) {
    std::fprintf(stderr, "tb_file: the simulation ran out of events before $finish (a hung bench)\n");
    return 1;
  }
  return context->gotError() ? 1 : 0;
}
