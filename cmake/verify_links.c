/* The program aspen_verify_links (AspenVerifyLinks.cmake) links a whole
 * static library into: it calls nothing, so only the library's own
 * references must resolve. */
int main(void);

int
main(void)
{
   return 0;
}
