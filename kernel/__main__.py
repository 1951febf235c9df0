"""``python -m kernel -f <connection file>``: what the kernelspec launches."""

from ipykernel.kernelapp import IPKernelApp

from kernel.jupyter.kernel import DurableKernel

if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=DurableKernel)
