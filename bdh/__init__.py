"""The Hatching model (BDH with spiking neurons), its curriculum data and its trainer."""
